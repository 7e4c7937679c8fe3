"""The kernel families, one module each, and which one serves an M bucket.

Every family module has the same small handle:

  FAMILY, VERSION         its name (in kernel names and cache keys) and template generation
  SIGNATURE_EXTRA         constexpr parameters appended to templates.SIGNATURE ("" for none)
  emit_body(widths)       the kernel body's source for a width set
  block_m(M, cfg)         activation rows per program
  grid(M, n_tiles, split_k, bm)
  config_space(M, n_tiles_for, groups, block_rows, group_size, has_col_perm) -> [Config]
  INTERPRETER, FALLBACK   the config under Triton's interpreter / when no table has one
  launch(L, cfg)          optional: its own host side (else launch.standard_launch)
  SERVES                  optional: the other bucket families whose launches it can take (by config)
  NEEDS_GROUP_SUMS        optional: the launcher passes per-(row, group) activation sums
  ALL_WIDTHS              optional, default True: False = never used for the all-widths kernel
                          (too slow to compile); the bucket's own family runs it instead

Adding a family: its module, one entry in ``FAMILIES`` (and, if it serves a new M range, in
``family_for``); shipped tile defaults in default_configs.json are optional.

M buckets (M = rows of x after flattening leading dims): m1 = 1 -> gemv (bit-plane FMA GEMV, no
tensor cores), m16 = 2..16 -> the decode bucket (BLOCK_M = 16, the smallest mma tile), whose launches
run prefill's tensor-core body by default (its configs name family "prefill"; decode's own tf32 body
is the tuner's alternative), above -> prefill (m64, m256, m1024, mlarge: tile choices differ per bucket).
"""
from __future__ import annotations

import math

from . import decode, dequant, gemv, gemvh, gemvu, prefill

# dequant serves no bucket by itself: ops/triton.py names it for large M (dequantize + cuBLAS).
FAMILIES = {m.FAMILY: m for m in (gemv, gemvu, gemvh, decode, prefill, dequant)}
M_BUCKETS = ((1, "m1"), (16, "m16"), (64, "m64"), (256, "m256"), (1024, "m1024"), (math.inf, "mlarge"))


def m_bucket(M: int) -> str:
    for hi, name in M_BUCKETS:
        if M <= hi:
            return name
    raise AssertionError


def family_for(M: int) -> str:
    """gemv for M == 1, decode for M <= 16 (both bandwidth-bound), prefill above (compute-bound)."""
    if M <= 1:
        return gemv.FAMILY
    return decode.FAMILY if M <= decode.M_MAX else prefill.FAMILY


def serving(bucket_family: str) -> list:
    """The family modules that can take a bucket family's launches: itself first, then the
    alternatives that list it in ``SERVES`` (a tuner compares them all)."""
    return [FAMILIES[bucket_family]] + [m for m in FAMILIES.values()
                                        if bucket_family in getattr(m, "SERVES", ())]
