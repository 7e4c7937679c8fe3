"""Code generation, kernel caches, M buckets and the autotune config store (no kernel launches)."""
import hashlib
import json
import re


import pytest  # noqa: E402
import torch  # noqa: E402

from sfmp_compile.codegen import (KernelKey, distinct_kernels, emit_source, get_kernel, kernel_source,  # noqa: E402
                                  m_bucket, family_for)
from sfmp_compile.codegen import autotune, generate  # noqa: E402
from sfmp_compile.codegen.families import M_BUCKETS  # noqa: E402
from sfmp_compile.codegen.tiles import Config  # noqa: E402


def test_source_is_specialised_on_the_width_set():
    src = emit_source(KernelKey("decode", (3, 2)))
    compile(src, "<generated>", "exec")  # valid Python
    assert src.count("# ---- segment:") == 2
    assert "# ---- segment: 2-bit blocks" in src and "# ---- segment: 3-bit blocks" in src
    assert "segp_ptr + r * 10 + 2)" in src and "segp_ptr + r * 10 + 4)" in src  # literal bounds
    # No per-element branching on a block's width: the bit map is never read by the kernel.
    code = "\n".join(line.split("#")[0] for line in src.split('"""')[2].splitlines())
    assert not re.search(r"\bbits\b", code) and not re.search(r"\bbits\b", src.split('"""')[0])
    src8 = emit_source(KernelKey("prefill", range(1, 9)))
    assert src8.count("# ---- segment:") == 8
    assert "& 255" in src8  # the 8-bit plane's literal mask
    assert "<< 6" in src8  # 7 bits = planes 4, 2, 1: the 1-bit plane lands at bit 6
    assert emit_source(KernelKey("decode", (2, 3))) == src  # deterministic, set semantics


def test_key_name_roundtrip_and_validation():
    k = KernelKey("prefill", (4, 2, 2))
    assert k.widths == (2, 4) and k.name == "sfmp_prefill_w2_4"
    assert KernelKey.parse(k.name) == k
    with pytest.raises(ValueError):
        KernelKey("gemm", (2,))
    with pytest.raises(ValueError):
        KernelKey("decode", (9,))
    with pytest.raises(ValueError):
        KernelKey.parse("nonsense")


def test_cache_in_memory_and_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("SFMP_CACHE_DIR", str(tmp_path))
    key = KernelKey("decode", (1, 6))  # a set no other test uses
    generate._kernels.pop(key, None)
    n0 = distinct_kernels()
    k1 = get_kernel(key)
    assert get_kernel(key) is k1 and distinct_kernels() == n0 + 1
    get_kernel(key.name)  # by name: same entry
    assert distinct_kernels() == n0 + 1
    path = generate.kernel_path(key)
    assert path.parent == tmp_path / "kernels" and path.read_text() == kernel_source(key)
    assert kernel_source(key.name) == emit_source(key)


def test_m_buckets_and_families():
    assert [m_bucket(m) for m in (1, 2, 16, 17, 64, 65, 256, 257, 1024, 1025, 10**6)] == [
        "m1", "m16", "m16", "m64", "m64", "m256", "m256", "m1024", "m1024", "mlarge", "mlarge"]
    assert family_for(1) == "gemv" and family_for(2) == "decode"
    assert family_for(16) == "decode" and family_for(17) == "prefill"


def test_interpreter_uses_one_config_per_family():
    for fam in ("gemv", "decode", "prefill"):
        cfgs = {autotune.get_config(fam, M, 4096, 4096, (2, 3), 128, 512, torch.float16, "cpu")
                for M in {"gemv": (1,), "decode": (2, 3, 9), "prefill": (17, 100, 3000)}[fam]}
        assert len({(c.BLOCK_N, c.BLOCK_K, c.SPLIT_K) for c in cfgs}) == 1


def test_default_configs_cover_every_bucket():
    data = json.loads(autotune.DEFAULTS_FILE.read_text())
    for _, bucket in M_BUCKETS:
        fam = {"m1": "gemv", "m16": "decode"}.get(bucket, "prefill")
        Config.from_dict(data["generic"][f"{fam}|{bucket}"])


def test_tuned_cache_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SFMP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "interpreting", lambda: False)
    autotune._tuned.clear()
    dev = torch.device("cuda")  # a device object only; nothing is launched
    args = ("gemv", 1, 4096, 14336, (2, 3), 128, 512, torch.float16, dev)
    default = autotune.get_config(*args)
    data = json.loads(autotune.DEFAULTS_FILE.read_text())
    # a shipped per-GPU section (measured tiles) wins over the generic one on that GPU
    section = data.get("gpus", {}).get(autotune.device_name(dev), data["generic"])
    assert default == Config.from_dict(section.get("gemv|m1", data["generic"]["gemv|m1"]))
    tuned = Config(BLOCK_M=1, BLOCK_N=32, BLOCK_K=128, SPLIT_K=8, num_warps=2, num_stages=3)
    autotune.save_tuned(dev, autotune.config_key(*args[:-1]), tuned, 0.01)
    assert autotune.get_config(*args) == tuned
    on_disk = json.loads(autotune.tuned_cache_path(dev).read_text())
    assert "triton" in on_disk["meta"] and len(on_disk["configs"]) == 1
    # Another shape of the same family/bucket/widths/dtype borrows the nearest tuned entry.
    assert autotune.get_config("gemv", 1, 4096, 4096, (2, 3), 128, 512, torch.float16, dev) == tuned
    autotune._tuned.clear()


@pytest.mark.parametrize("M", [1, 16, 128, 2048])
def test_candidate_space_is_pruned_and_nonempty(M):
    fam = family_for(M)
    space = autotune.candidate_configs(fam, M, 4096, 14336, 128, 512, True)
    assert 1 <= len(space) <= 48
    assert all(c.BLOCK_N <= 512 and c.BLOCK_K <= 128 for c in space)


def test_tune_picks_fastest_and_persists(tmp_path, monkeypatch):
    monkeypatch.setenv("SFMP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "interpreting", lambda: False)
    autotune._tuned.clear()
    dev = torch.device("cuda")
    launched = []

    def run(cfg):
        launched.append(cfg)
        if cfg.BLOCK_N == 256:
            raise RuntimeError("out of shared memory")  # a failing config is skipped

    def timer(fn):
        fn()
        return 1.0 / launched[-1].BLOCK_N + 1e-5 * launched[-1].SPLIT_K  # wider & less split = faster

    first = autotune.get_config("gemv", 1, 4096, 14336, (2, 3), 128, 512, torch.float16, dev)
    best = autotune.tune(run, "gemv", 1, 4096, 14336, (2, 3), 128, 512, torch.float16, dev, True,
                         budget_s=60, timer=timer)
    assert best.BLOCK_N == 128 and launched[0] == first  # the current choice is tried first
    assert autotune.get_config("gemv", 1, 4096, 14336, (2, 3), 128, 512, torch.float16, dev) == best
    autotune._tuned.clear()
    assert autotune.get_config("gemv", 1, 4096, 14336, (2, 3), 128, 512, torch.float16, dev) == best  # from disk
    autotune._tuned.clear()


@pytest.mark.parametrize("damage", ["non_utf8", "wrong_source", "directory"])
def test_a_damaged_kernel_cache_entry_heals_and_is_never_executed(tmp_path, monkeypatch, damage):
    """A cache entry that is not the kernel's exact source is rewritten (or, if something that is no
    regular file sits on its name, bypassed), so every later run works and nothing unchecked runs."""
    monkeypatch.setenv("SFMP_CACHE_DIR", str(tmp_path))
    key = KernelKey("decode", (1, 7))  # a set no other test uses
    src = emit_source(key)
    sha = hashlib.sha256(src.encode()).hexdigest()[:12]
    path = tmp_path / "kernels" / f"{key.name}_{sha}.py"
    path.parent.mkdir(parents=True)
    if damage == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"\xff\xfe not utf-8" if damage == "non_utf8" else b"raise SystemExit('planted')\n")
    generate._kernels.pop(key, None)
    assert callable(get_kernel(key))
    used = generate.kernel_path(key)
    assert used.read_text() == src
    assert (used == path) == (damage != "directory") and (damage != "directory" or path.is_dir())
    generate._kernels.pop(key, None)


def test_tuned_table_ignores_garbage_and_keeps_every_entry_across_processes(tmp_path, monkeypatch):
    import subprocess
    import sys
    monkeypatch.setenv("SFMP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "interpreting", lambda: False)
    dev = torch.device("cuda")  # a device object only; nothing is launched
    path = autotune.tuned_cache_path(dev)
    path.parent.mkdir(parents=True)
    args = ("gemv", 1, 4096, 14336, (2, 3), 128, 512, torch.float16, dev)
    autotune._tuned.clear()
    shipped = autotune.get_config(*args)  # no tuned file: the shipped default
    for garbage in (b"[1, 2]", b'{"configs": [1]}', b'{"configs": {"k": 1, "g|m1": {"BLOCK_M": "x"}}}',
                    b"\xff not json"):
        path.write_bytes(garbage)
        autotune._tuned.clear()
        assert autotune._tuned_table(dev) == {} and autotune.get_config(*args) == shipped
    autotune._tuned.clear()
    path.unlink()
    # Two processes saving 20 entries each at once: the file lock keeps all 40.
    code = ("import sys, torch; from sfmp_compile.codegen import autotune; from sfmp_compile.codegen.tiles import Config\n"
            "for i in range(20): autotune.save_tuned(torch.device('cuda'), f'k{sys.argv[1]}_{i}', Config(1, 64, 128), 0.1)")
    env = {**__import__("os").environ, "SFMP_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(j)], env=env) for j in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    autotune._tuned.clear()
    assert len(autotune._tuned_table(dev)) == 40
    autotune._tuned.clear()


@pytest.mark.parametrize("squatter", ["fifo", "directory"])
def test_a_tuned_table_that_is_no_regular_file_is_neither_read_nor_replaced(tmp_path, monkeypatch, squatter):
    """issue 13's hostile run: a FIFO named like the table hung the first read forever; a directory
    made save_tuned raise IsADirectoryError. Now neither is read, the save keeps the entry in memory
    (with a warning) and leaves the squatter alone."""
    import os
    monkeypatch.setenv("SFMP_CACHE_DIR", str(tmp_path))
    dev = torch.device("cuda")  # a device object only; nothing is launched
    path = autotune.tuned_cache_path(dev)
    path.parent.mkdir(parents=True)
    os.mkfifo(path) if squatter == "fifo" else path.mkdir()
    autotune._tuned.clear()
    assert autotune._tuned_table(dev) == {}
    with pytest.warns(UserWarning, match="not a regular file"):
        autotune.save_tuned(dev, "k", Config(1, 64, 128), 0.1)
    assert "k" in autotune._tuned_table(dev) and (path.is_fifo() if squatter == "fifo" else path.is_dir())
    autotune._tuned.clear()


def test_a_kernel_cache_dir_that_is_a_file_falls_back_to_a_private_dir(tmp_path, monkeypatch):
    """issue 13's hostile run: ``<cache>/kernels`` being a file raised FileExistsError on every launch."""
    monkeypatch.setenv("SFMP_CACHE_DIR", str(tmp_path))
    (tmp_path / "kernels").write_text("x")
    monkeypatch.setattr(generate, "_fallback_dir", None)
    key = KernelKey("decode", (1, 6))  # a set no other test uses
    generate._kernels.pop(key, None)
    with pytest.warns(UserWarning, match="not a usable directory"):
        assert callable(get_kernel(key))
    assert generate.kernel_path(key).read_text() == emit_source(key)
    assert (tmp_path / "kernels").read_text() == "x"
    generate._kernels.pop(key, None)
