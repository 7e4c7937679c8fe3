"""Tile configs per launch, and the on-disk autotune cache.

Config lookup order for a launch on GPU (first hit wins), by the M bucket's family (families.py):
  1. tuned cache  ``<cache_dir>/autotune/<gpu>__triton-<ver>.json``, exact key
     ``family|bucket|N|K|widths|group|block_rows|dtype``;
  2. the same file, any shape with the same ``family|bucket|widths|dtype`` (closest N*K), then
     the same without the widths;
  3. shipped ``default_configs.json``: per-GPU section, then its ``generic`` section, by
     ``family|bucket``;
  4. the family's FALLBACK.
A config's ``family`` field may name another family serving the bucket (e.g. gemvu for m1): the
tuner benchmarks every serving family's space and stores the winner with its family.
Tuning never happens during tracing; it runs on the first eager CUDA launch of a key with
``SFMP_AUTOTUNE=1`` set, or when :func:`tune` is called. Under the Triton interpreter each family's
INTERPRETER config is used (multi-config autotuning does not work there).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import stat
import threading
import time
import warnings
from pathlib import Path

import torch
from filelock import FileLock

from .families import FAMILIES, m_bucket, serving
from .generate import cache_dir
from .tiles import Config, pow2_at_least

DEFAULTS_FILE = Path(__file__).with_name("default_configs.json")


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
    return f"{family}|{m_bucket(M)}|N{N}|K{K}|w{w}|g{group_size}|r{block_rows}|{str(dtype).replace('torch.', '')}"


_lock = threading.Lock()
_tuned: dict[str, dict] = {}  # cache path -> {key: config dict}
_defaults: dict | None = None


def _load_json(path: Path) -> dict:
    """The JSON object in ``path``, or {} when it is missing, unreadable or not an object (a cache
    is rebuilt, never trusted)."""
    if not _regular_or_missing(path) or not path.exists():
        return {}  # a FIFO would block the read forever, a device stream without end
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _regular_or_missing(path: Path) -> bool:
    """True when ``path`` is a regular file (symlinks followed) or does not exist."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _valid_configs(table) -> dict:
    """The entries of a tuned table that are config objects Config accepts; others are dropped."""
    out = {}
    for k, v in (table.items() if isinstance(table, dict) else ()):
        try:
            if isinstance(k, str) and isinstance(v, dict):
                Config.from_dict(v)
                out[k] = v
        except (TypeError, ValueError):
            continue
    return out


def _tuned_table(device) -> dict:
    p = str(tuned_cache_path(device))
    with _lock:
        if p not in _tuned:
            _tuned[p] = _valid_configs(_load_json(Path(p)).get("configs"))
        return _tuned[p]


def _defaults_table() -> dict:
    global _defaults
    if _defaults is None:
        _defaults = _load_json(DEFAULTS_FILE)
    return _defaults


def _fix_block_m(family: str, M: int, cfg: Config) -> Config:
    bm = FAMILIES[cfg.family or family].block_m(M, cfg)
    return cfg if cfg.BLOCK_M == bm else cfg.with_(BLOCK_M=bm)


def _nearest(table: dict, parts: tuple, N: int, K: int, match_widths: bool) -> dict | None:
    """The entry of ``table`` for the same family, bucket and dtype (and widths) closest in N*K."""
    near = []
    for k, v in table.items():
        p = k.split("|")
        if len(p) != 8 or (p[0], p[1], p[7]) != (parts[0], parts[1], parts[7]):
            continue
        if match_widths and p[4] != parts[4]:
            continue
        near.append((abs(math.log(int(p[2][1:]) * int(p[3][1:]) / (N * K))), v))
    return min(near, key=lambda t: t[0])[1] if near else None


def get_config(family: str, M: int, N: int, K: int, widths, group_size: int, block_rows: int,
               dtype, device) -> Config:
    """The tile config for one launch of a bucket family (see the module docstring for the lookup)."""
    dev = torch.device(device)
    if dev.type != "cuda" or interpreting():
        return _fix_block_m(family, M, FAMILIES[family].INTERPRETER)
    key = config_key(family, M, N, K, widths, group_size, block_rows, dtype)
    table = _tuned_table(dev)
    hit = table.get(key)
    if hit is None:
        parts = tuple(key.split("|"))
        hit = _nearest(table, parts, N, K, True) or _nearest(table, parts, N, K, False)
    if hit is None:
        data = _defaults_table()
        sub = f"{family}|{m_bucket(M)}"
        for section in (data.get("gpus", {}).get(device_name(dev), {}), data.get("generic", {})):
            if sub in section:
                hit = section[sub]
                break
    cfg = Config.from_dict(hit) if hit is not None else FAMILIES[family].FALLBACK
    if cfg.family and cfg.family not in FAMILIES:
        cfg = FAMILIES[family].FALLBACK  # a table naming a family this build does not have
    return _fix_block_m(family, M, cfg)


def sm_count(device) -> int:
    """Streaming multiprocessors of a CUDA device; 132 (H100/H200 SXM) elsewhere."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(dev).multi_processor_count
    return 132


def auto_split_k(n_programs: int, groups: int, sms: int) -> int:
    """Split-K so that about two waves of programs are in flight (decode is latency/bandwidth bound)."""
    sk = 1
    while n_programs * sk < 2 * sms and sk * 2 <= min(16, groups):
        sk *= 2
    return sk


def save_tuned(device, key: str, cfg: Config, ms: float) -> None:
    """Merge one tuned entry into the on-disk JSON: read-modify-write under a file lock (processes
    tuning at once keep every entry), written to a temporary file and renamed (readers never see a
    half-written table)."""
    path = tuned_cache_path(device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = None
    if path is None or not _regular_or_missing(path):
        # something that is no regular file holds the table's name (or its folder cannot be made):
        # keep the entry for this process rather than fail a launch or replace what is there
        warnings.warn(f"sfmp autotune: {tuned_cache_path(device)} is not a regular file; the tuned config "
                      "is kept in memory only", stacklevel=2)
        with _lock:
            _tuned.setdefault(str(tuned_cache_path(device)), {})[key] = {**cfg.to_dict(), "ms": round(ms, 5)}
        return
    with _lock, FileLock(str(path) + ".lock"):
        data = _load_json(path)
        if not isinstance(data.get("meta"), dict):
            data["meta"] = {"gpu": device_name(device), "triton": _triton_version(), "torch": torch.__version__}
        data["configs"] = _valid_configs(data.get("configs"))
        data["configs"][key] = {**cfg.to_dict(), "ms": round(ms, 5)}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
        _tuned[str(path)] = data["configs"]


def candidate_configs(family: str, M: int, N: int, K: int, group_size: int, block_rows: int,
                      has_col_perm: bool) -> list[Config]:
    """The pruned config space for one (bucket family, M bucket, N, K): every serving family's,
    interleaved."""
    groups = -(-K // group_size)
    R = -(-N // block_rows)

    def n_tiles_for(bn: int) -> int:
        return R * -(-min(block_rows, N) // min(bn, pow2_at_least(block_rows)))

    # An alternative family's configs name it, so a lookup runs the body the tuner timed.
    spaces = [[c if c.family or fam.FAMILY == family else c.with_(family=fam.FAMILY)
               for c in fam.config_space(M, n_tiles_for, groups, block_rows, group_size, has_col_perm)]
              for fam in serving(family)]
    # Interleaved, each family's most promising configs first: a time-boxed tune reaches them all.
    return [c for batch in itertools.zip_longest(*spaces) for c in batch if c is not None]


def _gpu_timer(fn, rep_ms: int = 25) -> float:
    """ms per call; CUDA-graph replay where possible so Triton's Python launch cost does not hide a
    short kernel."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms))
    except Exception:  # noqa: BLE001 - graph capture can fail (allocator, sync); time eagerly
        return float(triton.testing.do_bench(fn, rep=rep_ms))


def search(run, configs: list[Config], budget_s: float, timer=None) -> tuple[Config | None, float]:
    """Time ``run(cfg)`` for each config in order with ``timer(fn) -> ms`` (default: CUDA-graph
    timing); no new config is started once ``budget_s`` is spent. Configs that fail to compile
    (shared memory, registers) are skipped. Returns (fastest or None, its ms)."""
    timer = timer or _gpu_timer
    best, best_ms, t0 = None, float("inf"), time.time()
    for cfg in configs:
        if time.time() - t0 > budget_s and best is not None:
            break
        try:
            ms = timer(lambda cfg=cfg: run(cfg))
        except Exception:  # noqa: BLE001 - a config that fails to compile is skipped
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    return best, best_ms


def tune(run, family: str, M: int, N: int, K: int, widths, group_size: int, block_rows: int, dtype,
         device, has_col_perm: bool, budget_s: float = 60.0, timer=None) -> Config:
    """Benchmark the pruned config space and store the fastest under the exact key.

    ``run(cfg)`` must launch the kernel once with that config; ``timer(fn) -> ms`` defaults to
    CUDA-graph timing. The current choice (get_config) is tried first; no new config is started once
    ``budget_s`` is spent (the best so far wins). Configs that fail to compile are skipped.
    """
    key = config_key(family, M, N, K, widths, group_size, block_rows, dtype)
    first = get_config(family, M, N, K, widths, group_size, block_rows, dtype, device)
    space = candidate_configs(family, M, N, K, group_size, block_rows, has_col_perm)
    best, best_ms = search(run, [first] + [c for c in space if c != first], budget_s, timer)
    if best is None:
        best, best_ms = FAMILIES[family].FALLBACK, float("nan")
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
