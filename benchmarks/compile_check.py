"""Compile the generated SFMP kernels for a GPU target WITHOUT a GPU, and report what ptxas made.

Triton lowers to PTX and runs ptxas on a CPU-only machine when given an explicit target, so this
catches GPU-only compile errors (layouts, dot shapes, shared-memory overflow) in CI and shows the
instruction mix that decides speed: register spills (STL), int->float converts (I2F), tensor-core
ops (HMMA / HGMMA) and LOP3s. Must run WITHOUT TRITON_INTERPRET (interpreted kernels do not compile).

    python benchmarks/compile_check.py            # sm_90 (H100/H200), representative variants
    python benchmarks/compile_check.py --quick    # one variant per family
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("compile_check needs compiled Triton: run with TRITON_INTERPRET unset or 0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sfmp_compile.codegen.generate import KernelKey, get_kernel  # noqa: E402

PTR = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}
DOT_KIND = {"fp16": 1, "bf16": 2, "fp32": 3}

# (family, widths, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages, dtype)
VARIANTS = [
    ("gemv", (2, 3), 1, 64, 128, 4, 2, 4, "fp16"),
    ("gemv", (3, 4), 1, 128, 128, 8, 4, 4, "bf16"),
    ("gemv", tuple(range(1, 9)), 1, 64, 128, 4, 2, 4, "fp16"),
    ("decode", (2, 3), 16, 64, 128, 4, 4, 3, "fp16"),
    ("decode", (2, 3, 4), 16, 64, 128, 4, 4, 3, "fp32"),
    ("prefill", (2, 3), 128, 128, 64, 1, 8, 3, "fp16"),
    ("prefill", (3, 4), 64, 128, 64, 2, 8, 3, "bf16"),
    ("prefill", (2, 3), 256, 128, 64, 1, 8, 3, "fp16"),
]
QUICK = [VARIANTS[0], VARIANTS[3], VARIANTS[5]]


def compile_variant(family, widths, bm, bn, bk, split_k, warps, stages, dtype, cc=90, group_size=128,
                    row_perm=True, col_perm=True):
    kernel = get_kernel(KernelKey(family, widths))
    atomic = split_k > 1
    sig = {"x_ptr": PTR[dtype], "xs_ptr": "*fp32", "y_ptr": "*fp32" if atomic else PTR[dtype],
           "qw_ptr": "*i32", "boff_ptr": "*i32", "gord_ptr": "*i32", "segp_ptr": "*i32", "s_ptr": "*fp16",
           "z_ptr": "*fp16", "rperm_ptr": "*i32", "cperm_ptr": "*i32"}
    sig.update({k: "i32" for k in ("M", "N", "K", "G", "stride_xm", "stride_ym", "block_rows", "group_size",
                                   "tiles_per_rb", "magic_bits")})
    const = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split_k, ONE_CHUNK=bk >= group_size,
                 HAS_ROW_PERM=row_perm, HAS_COL_PERM=col_perm, DOT_KIND=DOT_KIND[dtype], ATOMIC=atomic)
    sig.update({k: "constexpr" for k in const})
    src = ASTSource(fn=kernel, signature=sig,
                    constexprs={(kernel.arg_names.index(k),): v for k, v in const.items()})
    t0 = time.time()
    ck = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": warps, "num_stages": stages})
    dt = time.time() - t0
    ops = Counter(re.findall(r"^\s*[-0-9:A-Y]+\s+([A-Z0-9]+)", ck.asm["sass"], re.M))
    return dict(seconds=dt, shared=ck.metadata.shared, spills=ops["STL"], i2f=ops["I2F"],
                mma=ops["HMMA"] + ops["HGMMA"], lop3=ops["LOP3"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cc", type=int, default=90, help="compute capability, e.g. 80 (A100) or 90 (H100)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    failures = 0
    print(f"# triton {triton.__version__}  target sm_{args.cc}")
    for v in (QUICK if args.quick else VARIANTS):
        fam, widths, bm, bn, bk, sk, warps, stages, dtype = v
        try:
            r = compile_variant(*v, cc=args.cc)
            print(f"OK   {fam:<7} w{widths!s:<26} {dtype} BM{bm} BN{bn} BK{bk} SK{sk} warps{warps} st{stages}: "
                  f"{r['seconds']:.1f}s smem {r['shared']} spills {r['spills']} I2F {r['i2f']} "
                  f"mma {r['mma']} LOP3 {r['lop3']}", flush=True)
        except Exception as e:  # noqa: BLE001
            failures += 1
            print(f"FAIL {fam} {widths} {dtype}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
