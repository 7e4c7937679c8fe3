"""M buckets, tile configs, and the on-disk autotune cache.

M buckets (M = rows of x after flattening leading dims):

  ======== ========= ===================================================================
  bucket   M         kernel
  ======== ========= ===================================================================
  m1       1         gemv: bit-plane FMA GEMV (no code tile, no tensor cores), split-K
  m16      2..16     decode: BLOCK_M = 16 (smallest mma tile), tl.dot, split-K
  m64      17..64    prefill, small tiles, split-K allowed
  m256     65..256   prefill
  m1024    257..1024 prefill
  mlarge   > 1024    prefill, big tiles
  ======== ========= ===================================================================

Config lookup order for a launch on GPU (first hit wins):
  1. tuned cache  ``<cache_dir>/autotune/<gpu>__triton-<ver>.json``, exact key
     ``family|bucket|N|K|widths|group|block_rows|dtype``;
  2. the same file, any shape with the same ``family|bucket|widths|dtype`` (closest N*K), then
     the same without the widths;
  3. shipped ``default_configs.json``: per-GPU section, then its ``generic`` section, by
     ``family|bucket``;
  4. a built-in fallback.
Tuning (benchmarking a pruned config space) never happens during tracing; it runs on the first
eager CUDA launch of a key with ``SFMP_AUTOTUNE=1`` set (direct launches, e.g. ``run_triton`` or
``sfmp_linear`` outside torch.compile) or when :func:`tune` is called. Under the
Triton interpreter a single config per family is used (multi-config autotuning does not work there).
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import decode, gemv, prefill
from .generate import cache_dir

DECODE_M_MAX = decode.M_MAX
M_BUCKETS = ((1, "m1"), (16, "m16"), (64, "m64"), (256, "m256"), (1024, "m1024"), (math.inf, "mlarge"))
DEFAULTS_FILE = Path(__file__).with_name("default_configs.json")


def m_bucket(M: int) -> str:
    for hi, name in M_BUCKETS:
        if M <= hi:
            return name
    raise AssertionError


def family_for(M: int) -> str:
    """gemv for M == 1, decode for M <= 16 (both bandwidth-bound), prefill above (compute-bound)."""
    if M <= 1:
        return gemv.FAMILY
    return decode.FAMILY if M <= DECODE_M_MAX else prefill.FAMILY


@dataclass(frozen=True)
class Config:
    """One tile configuration. SPLIT_K == 0 means: choose from the SM count at launch."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    SPLIT_K: int = 1
    num_warps: int = 4
    num_stages: int = 2
    pregather: bool = False
    U: int = 1  # groups per iteration (variant-4 gemv only; ignored elsewhere)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["U"] == 1:
            del d["U"]  # the default: keeps entries of the other variants/families as they were
        return d


# Under TRITON_INTERPRET the cost is per program instance: big tiles, few programs. The decode
# config keeps SPLIT_K = 2 so the atomic split-K path is what the interpreter tests exercise.
INTERPRETER = {
    "gemv": Config(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=1),
    "decode": Config(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=1),
    "prefill": Config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, SPLIT_K=1, num_warps=4, num_stages=1),
}
# Variant-4 gemv (templates.variant() == 4): 4 rows per thread (128-bit loads when ALIGNED), tiles
# double-buffered in registers (num_stages >= 2 -> PIPE), x gathered through col_perm in the kernel
# (inside the prefetch, so its dependent load overlaps a whole multiply; saves the index_select
# launch); split-K from the SM count (gemv.v4_split_k). Chosen from the sm_90 compile
# (benchmarks/compile_check.py --goal: 253 registers, no spills), not measured on a GPU.
FALLBACK_GEMV_V4 = Config(BLOCK_M=1, BLOCK_N=128, BLOCK_K=128, SPLIT_K=0, num_warps=1, num_stages=2,
                          pregather=False, U=1)
INTERPRETER_GEMV_V4 = Config(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=1, U=2)
FALLBACK = {
    "gemv": Config(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, SPLIT_K=0, num_warps=2, num_stages=4),
    "decode": Config(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=0, num_warps=4, num_stages=3),
    "prefill": Config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=3),
}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def device_name(device) -> str:
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return "cpu-interpreter"


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError:  # pragma: no cover
        return "none"


def tuned_cache_path(device) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_name(device))
    return cache_dir() / "autotune" / f"{safe}__triton-{_triton_version()}.json"


def config_key(family: str, M: int, N: int, K: int, widths, group_size: int, block_rows: int, dtype) -> str:
    w = "".join(str(b) for b in widths)
    v4 = "|v4" if family == gemv.FAMILY and _variant() >= 4 else ""  # its own constexprs and space
    return f"{family}|{m_bucket(M)}|N{N}|K{K}|w{w}|g{group_size}|r{block_rows}|{str(dtype).replace('torch.', '')}{v4}"


_lock = threading.Lock()
_tuned: dict[str, dict] = {}  # cache path -> {key: config dict}
_defaults: dict | None = None


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tuned_table(device) -> dict:
    p = str(tuned_cache_path(device))
    with _lock:
        if p not in _tuned:
            _tuned[p] = _load_json(Path(p)).get("configs", {})
        return _tuned[p]


def _defaults_table() -> dict:
    global _defaults
    if _defaults is None:
        _defaults = _load_json(DEFAULTS_FILE)
    return _defaults


def _fix_block_m(family: str, M: int, cfg: Config) -> Config:
    if family == gemv.FAMILY:
        return cfg if cfg.BLOCK_M == 1 else Config(**{**cfg.to_dict(), "BLOCK_M": 1})
    if family == decode.FAMILY:
        bm = decode.block_m(M)
        return cfg if cfg.BLOCK_M == bm else Config(**{**cfg.to_dict(), "BLOCK_M": bm})
    if cfg.BLOCK_M < 16:
        return Config(**{**cfg.to_dict(), "BLOCK_M": 16})
    return cfg


def get_config(family: str, M: int, N: int, K: int, widths, group_size: int, block_rows: int,
               dtype, device) -> Config:
    """The tile config for one launch (see the module docstring for the lookup order)."""
    dev = torch.device(device)
    v4 = family == gemv.FAMILY and _variant() >= 4
    if dev.type != "cuda" or interpreting():
        return _fix_block_m(family, M, INTERPRETER_GEMV_V4 if v4 else INTERPRETER[family])
    key = config_key(family, M, N, K, widths, group_size, block_rows, dtype)
    table = _tuned_table(dev)
    # Variant 4's gemv has its own constexpr (U) and layout needs: its tuned entries (keys ending in
    # "|v4") serve only it, and it ignores the tiles tuned for variants 1-3 (they would run, badly).
    table = {k: v for k, v in table.items() if k.endswith("|v4") == v4}
    if key in table:
        return _fix_block_m(family, M, Config.from_dict(table[key]))
    fam, bucket, _, _, w, _, _, dt = key.split("|")[:8]
    near = [(abs(math.log((int(k.split("|")[2][1:]) * int(k.split("|")[3][1:])) / (N * K))), v)
            for k, v in table.items()
            if k.split("|")[0] == fam and k.split("|")[1] == bucket and k.split("|")[4] == w and k.split("|")[7] == dt]
    if not near:  # any width set: tile shape matters more than which widths the loops unpack
        near = [(abs(math.log((int(k.split("|")[2][1:]) * int(k.split("|")[3][1:])) / (N * K))), v)
                for k, v in table.items()
                if k.split("|")[0] == fam and k.split("|")[1] == bucket and k.split("|")[7] == dt]
    if near:
        return _fix_block_m(family, M, Config.from_dict(min(near, key=lambda t: t[0])[1]))
    data = _defaults_table()
    sub = f"{family}|{m_bucket(M)}" + ("|v4" if v4 else "")
    for section in (data.get("gpus", {}).get(device_name(dev), {}), data.get("generic", {})):
        if sub in section:
            return _fix_block_m(family, M, Config.from_dict(section[sub]))
    return _fix_block_m(family, M, FALLBACK_GEMV_V4 if v4 else FALLBACK[family])


def _variant() -> int:
    from .templates import variant
    return variant()


def sm_count(device) -> int:
    """Streaming multiprocessors of a CUDA device; 132 (H100/H200 SXM) elsewhere."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(dev).multi_processor_count
    return 132


def auto_split_k(n_programs: int, groups: int, device) -> int:
    """Split-K so that about two waves of programs are in flight (decode is latency/bandwidth bound)."""
    sms = sm_count(device)
    sk = 1
    while n_programs * sk < 2 * sms and sk * 2 <= min(16, groups):
        sk *= 2
    return sk


def save_tuned(device, key: str, cfg: Config, ms: float) -> None:
    """Merge one tuned entry into the on-disk JSON (read-modify-write, atomic rename)."""
    path = tuned_cache_path(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        data = _load_json(path)
        data.setdefault("meta", {"gpu": device_name(device), "triton": _triton_version(),
                                 "torch": torch.__version__})
        data.setdefault("configs", {})[key] = {**cfg.to_dict(), "ms": round(ms, 5)}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
        _tuned[str(path)] = data["configs"]


def candidate_configs(family: str, M: int, N: int, K: int, group_size: int, block_rows: int,
                      has_col_perm: bool) -> list[Config]:
    """The pruned config space for one (M bucket, N, K) (see decode.config_space / prefill.config_space)."""
    groups = -(-K // group_size)
    R = -(-N // block_rows)

    def n_tiles_for(bn: int) -> int:
        return R * -(-min(block_rows, N) // min(bn, _pow2(block_rows)))

    if family == gemv.FAMILY:
        space = gemv.config_space(M, n_tiles_for, groups, block_rows, group_size)
    elif family == decode.FAMILY:
        space = decode.config_space(M, n_tiles_for, groups, block_rows, group_size)
    else:
        space = prefill.config_space(M, n_tiles_for, groups, block_rows, group_size, has_col_perm)
        if M >= 1024:
            space = space[::-1]  # big tiles first: a time-boxed tune reaches them
    return [Config.from_dict(d) for d in space]


def _pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def _gpu_timer(fn, rep_ms: int = 25) -> float:
    """ms per call; CUDA-graph replay where possible so Triton's ~20 us Python launch cost does not
    hide a ~10 us kernel."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms))
    except Exception:  # noqa: BLE001 - graph capture can fail (allocator, sync); time eagerly
        return float(triton.testing.do_bench(fn, rep=rep_ms))


def tune(run, family: str, M: int, N: int, K: int, widths, group_size: int, block_rows: int, dtype,
         device, has_col_perm: bool, budget_s: float = 60.0, timer=None) -> Config:
    """Benchmark the pruned config space and store the fastest under the exact key.

    ``run(cfg)`` must launch the kernel once with that config; ``timer(fn) -> ms`` defaults to
    CUDA-graph timing. The current choice (get_config) is tried first; no new config is started once
    ``budget_s`` is spent (the best so far wins). Configs that fail to compile are skipped.
    """
    timer = timer or _gpu_timer
    key = config_key(family, M, N, K, widths, group_size, block_rows, dtype)
    best, best_ms, t0 = None, float("inf"), time.time()
    first = get_config(family, M, N, K, widths, group_size, block_rows, dtype, device)  # current choice
    space = candidate_configs(family, M, N, K, group_size, block_rows, has_col_perm)
    for cfg in [first] + [c for c in space if c != first]:
        if time.time() - t0 > budget_s and best is not None:
            break
        try:
            ms = timer(lambda cfg=cfg: run(cfg))
        except Exception:  # noqa: BLE001 - a config that fails to compile (smem, regs) is skipped
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        best, best_ms = FALLBACK[family], float("nan")
    save_tuned(device, key, best, best_ms)
    return best


def autotune_requested() -> bool:
    return os.environ.get("SFMP_AUTOTUNE", "0").lower() in ("1", "true", "on", "yes")


def tune_if_missing(run, family: str, M: int, N: int, K: int, widths, group_size: int, block_rows: int,
                    dtype, device, has_col_perm: bool) -> None:
    """:func:`tune` unless the exact key is already in the tuned cache (budget: $SFMP_AUTOTUNE_BUDGET s)."""
    dev = torch.device(device)
    if dev.type != "cuda" or interpreting():
        return
    key = config_key(family, M, N, K, widths, group_size, block_rows, dtype)
    if key in _tuned_table(dev):
        return
    tune(run, family, M, N, K, widths, group_size, block_rows, dtype, dev, has_col_perm,
         budget_s=float(os.environ.get("SFMP_AUTOTUNE_BUDGET", "60")))
