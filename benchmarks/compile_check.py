"""Compile the generated SFMP kernels for a GPU target WITHOUT a GPU, and report what ptxas made.

Triton lowers to PTX and runs ptxas on a CPU-only machine when given an explicit target, so this
catches GPU-only compile errors (layouts, dot shapes, shared-memory overflow) in CI and shows the
instruction mix that decides speed: register spills (STL), int->float converts (I2F), tensor-core
ops (HMMA / HGMMA) and LOP3s. Must run WITHOUT TRITON_INTERPRET (interpreted kernels do not compile).

    python benchmarks/compile_check.py            # sm_90 (H100/H200), representative kernels of
                                                  # every family (gemv, gemvu, gemvh, decode, prefill, dequant)
    python benchmarks/compile_check.py --quick    # one kernel per bucket family (gemv, decode, prefill)
    python benchmarks/compile_check.py --family gemvu   # the representative kernels of one family
    python benchmarks/compile_check.py --f16x2    # does Triton emit HADD2/HFMA2 for fp16 fields?
    python benchmarks/compile_check.py --m16      # M = 16 at the goal layer: decode's tf32 field dots vs
                                                  # prefill's fp16 tensor-core body (the m16 default)
    python benchmarks/compile_check.py --all-widths  # compile seconds of every default body's
                                                  # all-widths kernel (torch.compile's fallback)
    python benchmarks/compile_check.py --goal     # the M = 1 bodies, gemv / gemvu / gemvh, at the 4096x14336
                                                  # 3.0-BPW layer's launch facts (load widths, regs,
                                                  # spills, per-loop instructions per weight);
                                                  # --goal-family gemvh: only that body's rows

Kernels are compiled with the argument specialisations Triton's JIT would give them at that layer
(pointers 16-byte aligned; integer arguments divisible by 16 marked so), because load vectorisation
depends on them. The SASS comes from the bundled nvdisasm, the register count from cuobjdump.
A family's extra constexprs (its ``SIGNATURE_EXTRA``; gemvu: U, ALIGNED, PIPE) are set the way its
launcher sets them (gemvu.launch: ``launch_params`` for warps and U, PIPE = num_stages >= 2).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("compile_check needs compiled Triton: run with TRITON_INTERPRET unset or 0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sfmp_compile.codegen import dequant, gemvh, gemvu  # noqa: E402
from sfmp_compile.codegen.families import FAMILIES  # noqa: E402
from sfmp_compile.codegen.generate import KernelKey, get_kernel  # noqa: E402

# the bodies on gemvu's walk and host side (gemvh: its fp16x2 chunk multiply)
GEMVU_LIKE = (gemvu.FAMILY, gemvh.FAMILY)
PTR = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}
DOT_KIND = {"fp16": 1, "bf16": 2, "fp32": 3}

# (family, widths, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages, dtype[, extra]);
# extra: the gemvu knobs {u, aligned} (PIPE follows num_stages >= 2, as in gemvu.launch).
KERNELS = [
    ("gemv", (2, 3), 1, 64, 128, 4, 2, 4, "fp16"),
    ("gemv", (3, 4), 1, 128, 128, 8, 4, 4, "bf16"),
    ("gemv", tuple(range(1, 9)), 1, 64, 128, 4, 2, 4, "fp16"),
    ("decode", (2, 3), 16, 64, 128, 4, 4, 3, "fp16"),
    ("decode", (2, 3, 4), 16, 64, 128, 4, 4, 3, "fp32"),
    ("prefill", (2, 3), 128, 128, 64, 1, 8, 3, "fp16"),
    ("prefill", (3, 4), 64, 128, 64, 2, 8, 3, "bf16"),
    ("prefill", (2, 3), 256, 128, 64, 1, 8, 3, "fp16"),
    # gemvu.FALLBACK's shape (BN128, 1 warp, U1, PIPE), split-K as auto_split_k picks at the goal layer
    ("gemvu", (2, 3), 1, 128, 128, 32, 1, 2, "fp16", dict(u=1, aligned=True)),
    ("gemvu", (2, 3, 4), 1, 256, 128, 16, 2, 1, "bf16", dict(u=2, aligned=True)),
    ("gemvu", (3, 4), 1, 128, 128, 8, 1, 1, "fp16", dict(u=1, aligned=False)),
    # gemvh.FALLBACK's shape (gemvu's, fp16x2 fields through inline PTX; fp16 only)
    ("gemvh", (2, 3), 1, 128, 128, 32, 1, 2, "fp16", dict(u=1, aligned=True)),
    # dequant.FALLBACK's tile; SPLIT_K = group programs as dequant.group_programs picks at the goal
    # layer (64 row tiles -> 32); the all-widths kernel; a bf16 BLOCK_K < group (chunk loop) tile
    ("dequant", (2, 3), 1, 64, 128, 32, 4, 2, "fp16"),
    ("dequant", tuple(range(1, 9)), 1, 64, 128, 32, 4, 2, "fp16"),
    ("dequant", (3, 4), 1, 128, 64, 16, 4, 1, "bf16"),
    # the pregather config: columns kept reordered, so no col_perm scatter in the kernel
    ("dequant", (2, 3), 1, 64, 128, 32, 4, 2, "fp16", dict(col_perm=False)),
]
QUICK = [KERNELS[0], KERNELS[3], KERNELS[5]]  # one per bucket family: gemv, decode, prefill


# The goal layer (benchmarks/kernels.py: down_proj 4096x14336 at 3.0 BPW, block_rows 512, group 128)
# as the JIT sees it at M = 1; decides which integer arguments are specialised as multiples of 16.
GOAL_ARGS = dict(M=1, N=4096, K=14336, G=112, stride_xm=14336, stride_ym=4096, block_rows=512,
                 group_size=128, magic_bits=0x4B000000)
# (family, widths, BLOCK_N, SPLIT_K, num_warps, num_stages, U, ALIGNED, col_perm in kernel, label);
# gemvu: num_stages >= 2 = PIPE (tiles double-buffered in registers); gemv ignores U and ALIGNED.
GOAL = [
    ("gemv", (2, 3), 32, 8, 1, 4, 1, False, True, "gemv shipped H200 tile BN32 w1 (default_configs gemv|m1)"),
    ("gemvu", (2, 3), 128, 32, 1, 1, 1, True, False, "gemvu BN128 w1 U1"),
    ("gemvu", (2, 3), 128, 32, 1, 2, 1, True, True, "gemvu BN128 w1 U1 PIPE, x gathered in-kernel (FALLBACK)"),
    ("gemvu", (2, 3, 4), 128, 32, 1, 2, 1, True, True,
     "gemvu FALLBACK, widths {2,3,4} (4-bit walk: U 1, no PIPE, loads one chunk ahead)"),
    ("gemvu", (2, 3), 128, 16, 1, 1, 2, True, False, "gemvu BN128 w1 U2 (ptxas stops at 168 regs)"),
    ("gemvu", (2, 3), 256, 16, 2, 1, 2, True, False, "gemvu BN256 w2 U2"),
    ("gemvu", (2, 3), 256, 16, 2, 2, 1, True, False, "gemvu BN256 w2 U1 PIPE"),
    ("gemvu", (2, 3), 256, 16, 2, 2, 2, True, False, "gemvu BN256 w2 U2 PIPE"),
    ("gemvu", (2, 3), 256, 16, 2, 1, 2, False, False, "gemvu BN256 w2 U2, not ALIGNED"),
    # gemvh: gemvu's walk with fp16x2 field arithmetic (LOP3 + 2 HFMA2 per field pair)
    ("gemvh", (2, 3), 128, 32, 1, 1, 1, True, False, "gemvh BN128 w1 U1"),
    ("gemvh", (2, 3), 128, 32, 1, 2, 1, True, True, "gemvh BN128 w1 U1 PIPE, x gathered in-kernel (FALLBACK)"),
    ("gemvh", (2, 3, 4), 128, 32, 1, 2, 1, True, True, "gemvh FALLBACK, widths {2,3,4}"),
    ("gemvh", (2, 3), 256, 16, 2, 1, 2, True, False, "gemvh BN256 w2 U2"),
]
# M = 16 at the goal layer: (family, BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages, label).
M16 = [
    ("decode", 64, 128, 4, 4, 3, "decode BN64 (tf32 field dots, the old m16 default)"),
    ("prefill", 64, 128, 4, 4, 3, "prefill BM16 BN64"),
    ("prefill", 128, 128, 4, 4, 3, "prefill BM16 BN128 (decode.FALLBACK, the shipped m16 default)"),
    ("prefill", 256, 64, 4, 8, 3, "prefill BM16 BN256 BK64 w8"),
]
_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def _sass(cubin: bytes) -> str:
    """Full SASS text (nvdisasm), one instruction per line, with .L_x labels."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        return subprocess.run([str(_BIN / "nvdisasm"), "-c", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)


def _registers(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack bytes) from cuobjdump --dump-resource-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([str(_BIN / "cuobjdump"), "--dump-resource-usage", f.name],
                             capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    reg = re.search(r"REG:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    return (int(reg.group(1)) if reg else -1, int(stack.group(1)) if stack else -1)


_INS = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)(.*)$")


def sass_stats(sass: str) -> dict:
    """Opcode counts for the whole kernel and for each loop (a backward BRA to a label)."""
    labels, ins = {}, []
    for line in sass.splitlines():
        m = re.match(r"^(\.L_x_\d+):", line.strip())
        if m:
            labels[m.group(1)] = len(ins)
            continue
        m = _INS.match(line)
        if m:
            ins.append((m.group(1), m.group(2)))
    loops = []
    for k, (op, rest) in enumerate(ins):
        t = re.search(r"\((\.L_x_\d+)\)", rest) if op.startswith("BRA") else None
        if t and t.group(1) in labels and labels[t.group(1)] <= k:
            loops.append(Counter(o for o, _ in ins[labels[t.group(1)]:k + 1]))
    return dict(ops=Counter(o for o, _ in ins), loops=loops)


def _count(c: Counter, prefix: str, exact: bool = False) -> int:
    return sum(v for k, v in c.items() if (k == prefix if exact else k.split(".")[0] == prefix))


def load_widths(c: Counter) -> str:
    return (f"LDG.128 {c['LDG.E.128']} LDG.64 {c['LDG.E.64']} LDG.32 {c['LDG.E']} "
            f"LDG.16 {c['LDG.E.U16'] + c['LDG.E.16']}")


def extra_constexprs(family: str) -> list[str]:
    """Names of a family's constexprs beyond templates.SIGNATURE (its ``SIGNATURE_EXTRA``)."""
    return re.findall(r"(\w+)\s*:\s*tl\.constexpr", FAMILIES[family].SIGNATURE_EXTRA)


def compile_kernel(family, widths, bm, bn, bk, split_k, warps, stages, dtype, extra=None, cc=90, group_size=128,
                   row_perm=True, col_perm=True, args=None, detail=False):
    """Compile one kernel of ``family`` for sm_<cc>; ``args``: the integer launch arguments to
    specialise on (default GOAL_ARGS). ``extra``: gemvu's knobs ``u`` (groups per load) and
    ``aligned`` (the launcher's 4-word alignment fact). gemvu writes split-K partials with plain
    stores into an fp32 [SPLIT_K, M, N] buffer, the others into an atomic fp32 buffer when split."""
    kernel = get_kernel(KernelKey(family, widths))
    names = extra_constexprs(family)
    extra = dict(extra or {})
    if family in GEMVU_LIKE:
        warps, extra["u"] = gemvu.launch_params(bn, warps, extra.get("u", 1))  # what gemvu.launch runs
    atomic = split_k > 1 and family not in GEMVU_LIKE
    sig = {"x_ptr": PTR[dtype], "xs_ptr": "*fp32", "y_ptr": "*fp32" if split_k > 1 else PTR[dtype],
           "qw_ptr": "*i32", "boff_ptr": "*i32", "gord_ptr": "*i32", "segp_ptr": "*i32", "s_ptr": "*fp16",
           "z_ptr": "*fp16", "rperm_ptr": "*i32", "cperm_ptr": "*i32"}
    sig.update({k: "i32" for k in ("M", "N", "K", "G", "stride_xm", "stride_ym", "block_rows", "group_size",
                                   "tiles_per_rb", "magic_bits")})
    const = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split_k, ONE_CHUNK=bk >= group_size,
                 HAS_ROW_PERM=row_perm, HAS_COL_PERM=col_perm, DOT_KIND=DOT_KIND[dtype], ATOMIC=atomic)
    args = dict(args or {})
    if family == dequant.FAMILY:
        # As dequant._run launches it: no activations (int32 dummies in the x slots), the output is
        # the [N, K] weight in the dtype with row stride K, plain stores (SPLIT_K = group programs).
        sig.update(x_ptr="*i32", xs_ptr="*i32", y_ptr=PTR[dtype])
        const.update(DOT_KIND=0, ATOMIC=False)
        args = {"stride_xm": 0, "stride_ym": GOAL_ARGS["K"], "magic_bits": 0, **args}
    knobs = dict(U=extra.get("u", 1), ALIGNED=bool(extra.get("aligned", False)), PIPE=stages >= 2)
    for name in names:
        if name not in knobs:
            raise ValueError(f"family {family!r} has a constexpr {name!r} compile_check does not know how to set")
        const[name] = knobs[name]
    sig.update({k: "constexpr" for k in const})
    vals = {**GOAL_ARGS, "tiles_per_rb": -(-GOAL_ARGS["block_rows"] // bn), **args}
    # What the JIT specialises: 16-byte-aligned pointers and integer arguments divisible by 16.
    attrs = {(kernel.arg_names.index(k),): [["tt.divisibility", 16]] for k, t in sig.items()
             if t.startswith("*") or (t == "i32" and vals[k] % 16 == 0)}
    src = ASTSource(fn=kernel, signature=sig, attrs=attrs,
                    constexprs={(kernel.arg_names.index(k),): v for k, v in const.items()})
    t0 = time.time()
    ck = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": warps, "num_stages": stages})
    dt = time.time() - t0
    st = sass_stats(_sass(ck.asm["cubin"]))
    ops = st["ops"]
    regs, stack = _registers(ck.asm["cubin"])
    out = dict(seconds=dt, shared=ck.metadata.shared, spills=_count(ops, "STL"), i2f=_count(ops, "I2F"),
               mma=_count(ops, "HMMA") + _count(ops, "HGMMA"), lop3=_count(ops, "LOP3"), regs=regs, stack=stack,
               fadd=_count(ops, "FADD"), ffma=_count(ops, "FFMA"), shfl=_count(ops, "SHFL"),
               loads=load_widths(ops), warps=warps, u=extra.get("u", 1),
               stores=f"STG.128 {ops['STG.E.128']} STG.64 {ops['STG.E.64']} STG.32 {ops['STG.E']} "
                      f"STG.16 {ops['STG.E.U16'] + ops['STG.E.16']}")
    if detail:
        out["loops"] = st["loops"]
    return out


def goal_report(cc: int = 90, families=None) -> int:
    """The M = 1 bodies (gemv, gemvu, gemvh; ``families``: only those) at the goal layer's launch
    facts: one row per config, then one per segment loop (loops appear in width order: the 2-bit walk, then the 3-bit walk,
    ...). gemvu rows without PIPE pre-gather x (no col_perm in the kernel), as its config space does."""
    failures = 0
    print("| config | regs | stack B | STL | LDG.128 | LDG.64 | LDG.32 | LDG.16 | LOP3 | FADD | FFMA | SHFL |"
          " loop instr (2-bit / 3-bit / ...) | instr per weight (2-bit / 3-bit / ...) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for fam, widths, bn, sk, warps, stages, u, aligned, cp, label in GOAL:
        if families and fam not in families:
            continue
        try:
            r = compile_kernel(fam, widths, 1, bn, 128, sk, warps, stages, "fp16",
                               extra=dict(u=u, aligned=aligned) if fam in GEMVU_LIKE else None,
                               cc=cc, col_perm=cp, detail=True)
        except Exception as e:  # noqa: BLE001
            failures += 1
            print(f"| {label} | FAIL {type(e).__name__}: {str(e)[:300]} |")
            continue
        # weights one thread multiplies per loop iteration: U groups (gemvu, segments up to
        # V4_MULTI_MAX_BITS) x BLOCK_K columns x its rows
        rows = max(1, bn // (32 * r["warps"]))
        per_iter = [(r["u"] if (fam in GEMVU_LIKE and b <= gemvu.V4_MULTI_MAX_BITS) else 1) * 128 * rows
                    for b in widths]
        n = [sum(c.values()) for c in r["loops"] if sum(c.values()) > 1]  # not the trailing BRA-to-self
        ipw = [f"{k / w:.2f}" for k, w in zip(n, per_iter)]
        lw = dict(re.findall(r"(LDG\.\d+) (\d+)", r["loads"]))
        print(f"| {label} | {r['regs']} | {r['stack']} | {r['spills']} | {lw['LDG.128']} | {lw['LDG.64']} | "
              f"{lw['LDG.32']} | {lw['LDG.16']} | {r['lop3']} | {r['fadd']} | {r['ffma']} | {r['shfl']} | "
              f"{' / '.join(map(str, n))} | {' / '.join(ipw)} |", flush=True)
    return failures


def m16_report(cc: int = 90) -> int:
    """The m16 bodies at the goal layer (M = 16, widths {2, 3}, fp16): registers, spills, I2F, mma,
    and each segment loop's SASS instructions per weight (loop instructions / (BLOCK_K x BLOCK_N /
    threads)); the 2-bit walk's loop first, then the 3-bit walk's."""
    failures = 0
    print("| config | regs | STL | smem B | I2F | mma | loop instr (2-bit / 3-bit) | instr per weight (2-bit / 3-bit) |")
    print("|---|---|---|---|---|---|---|---|")
    for fam, bn, bk, sk, warps, stages, label in M16:
        try:
            r = compile_kernel(fam, (2, 3), 16, bn, bk, sk, warps, stages, "fp16", cc=cc,
                               args=dict(GOAL_ARGS, M=16), detail=True)
        except Exception as e:  # noqa: BLE001
            failures += 1
            print(f"| {label} | FAIL {type(e).__name__}: {str(e)[:300]} |")
            continue
        n = [sum(c.values()) for c in r["loops"] if sum(c.values()) > 1]
        per = bk * bn / (32 * warps)
        print(f"| {label} | {r['regs']} | {r['spills']} | {r['shared']} | {r['i2f']} | {r['mma']} | "
              f"{' / '.join(map(str, n))} | {' / '.join(f'{k / per:.2f}' for k in n)} |", flush=True)
    return failures


# The all-widths kernel of each bucket's default body (what torch.compile launches when a layer's width
# set is unknown at trace time): (family, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages, dtype).
ALL_WIDTHS = [
    ("gemv", 1, 32, 128, 8, 1, 4, "fp16"),        # the shipped H200 gemv|m1 tile
    ("gemv", 1, 64, 128, 4, 2, 4, "bf16"),        # the generic gemv|m1 tile
    ("prefill", 16, 128, 128, 4, 4, 3, "fp16"),   # m16: decode.FALLBACK / decode|m16 (prefill's body)
    ("prefill", 64, 128, 64, 1, 8, 3, "bf16"),    # prefill.FALLBACK
    ("dequant", 1, 64, 128, 32, 4, 2, "fp16"),    # dequant.FALLBACK (M >= PREFILL_DEQUANT_M)
]


def all_widths_report(cc: int = 90) -> int:
    """Compile time of each default body's all-widths kernel for sm_<cc>: wall seconds and CPU
    seconds (this process + ptxas; the compile is one thread, so CPU seconds are what a quiet
    machine's wall clock would show when a loaded one's wall time is not)."""
    import resource

    def cpu() -> float:
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    failures = 0
    for fam, bm, bn, bk, sk, warps, stages, dtype in ALL_WIDTHS:
        try:
            c0 = cpu()
            r = compile_kernel(fam, tuple(range(1, 9)), bm, bn, bk, sk, warps, stages, dtype, cc=cc)
            print(f"OK   {fam:<7} widths 1..8 {dtype} BM{bm} BN{bn} BK{bk} SK{sk} w{warps} st{stages}: "
                  f"{r['seconds']:.1f} s wall, {cpu() - c0:.1f} s CPU  regs {r['regs']} spills {r['spills']}",
                  flush=True)
        except Exception as e:  # noqa: BLE001
            failures += 1
            print(f"FAIL {fam} widths 1..8: {type(e).__name__}: {str(e)[:500]}", flush=True)
    return failures


def f16x2_probe(cc: int = 90, paired: bool = False) -> dict:
    """Does Triton pack fp16 field arithmetic into f16x2 (HADD2 / HFMA2) without inline PTX?

    A 2-bit plane probe: per word, ``m = (w >> 2i) & 0x00030003 | 0x64006400`` holds fields i and
    8+i as fp16 ``1024 + q`` in its two halves; 1024 is subtracted and the product with an
    activation accumulated in fp16. ``paired=False``: each half is its own fp16 element and the
    activations two separate loads; ``paired=True``: the halves stay one ``[.., 2]`` pair
    (``tl.join``) and the activations are stored pre-paired ``(x_i, x_{i+8})``. Returns SASS opcode
    counts and ALU instructions per field (the fp32 scheme of the gemv and gemvu bodies needs 3: LOP3 + FADD + FFMA)."""
    import triton.language as tl

    @triton.jit
    def probe(w_ptr, x_ptr, y_ptr, BLOCK: tl.constexpr, PAIRED: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        two = tl.arange(0, 2)
        w = tl.load(w_ptr + offs)
        if PAIRED:
            acc2 = tl.zeros([BLOCK, 2], dtype=tl.float16)
        else:
            acc = tl.zeros([BLOCK], dtype=tl.float16)
        for i in tl.static_range(8):
            m = ((w >> (2 * i)) & 0x00030003) | 0x64006400
            if PAIRED:
                f = tl.join(m.to(tl.int16), (m >> 16).to(tl.int16)).to(tl.float16, bitcast=True) - 1024.0
                acc2 += f * tl.load(x_ptr + (i * BLOCK + offs)[:, None] * 2 + two[None, :])
            else:
                lo = m.to(tl.int16).to(tl.float16, bitcast=True) - 1024.0
                hi = (m >> 16).to(tl.int16).to(tl.float16, bitcast=True) - 1024.0
                acc += lo * tl.load(x_ptr + i * BLOCK + offs)
                acc += hi * tl.load(x_ptr + (8 + i) * BLOCK + offs)
        if PAIRED:
            tl.store(y_ptr + offs[:, None] * 2 + two[None, :], acc2)
        else:
            tl.store(y_ptr + offs, acc)

    block, warps = 256, 1
    sig = {"w_ptr": "*i32", "x_ptr": "*fp16", "y_ptr": "*fp16", "BLOCK": "constexpr", "PAIRED": "constexpr"}
    src = ASTSource(fn=probe, signature=sig, attrs={(i,): [["tt.divisibility", 16]] for i in range(3)},
                    constexprs={(3,): block, (4,): paired})
    ck = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": warps})
    ops = sass_stats(_sass(ck.asm["cubin"]))["ops"]
    fields = block // (32 * warps) * 16
    alu = sum(_count(ops, k) for k in ("LOP3", "SHF", "PRMT", "HADD2", "HFMA2", "FADD", "FFMA", "F2F"))
    return dict(ops={k: v for k, v in ops.items() if v > 1}, fields_per_thread=fields, alu_per_field=alu / fields)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cc", type=int, default=90, help="compute capability, e.g. 80 (A100) or 90 (H100)")
    ap.add_argument("--quick", action="store_true", help="one kernel per bucket family (gemv, decode, prefill)")
    ap.add_argument("--family", action="append", choices=sorted(FAMILIES), default=None,
                    help="only the representative kernels of this family (repeatable)")
    ap.add_argument("--goal", action="store_true", help="only the M = 1 table (gemv, gemvu, gemvh) at the goal layer")
    ap.add_argument("--goal-family", action="append", choices=sorted({g[0] for g in GOAL}), default=None,
                    help="with --goal: only the rows of this body (repeatable)")
    ap.add_argument("--m16", action="store_true", help="only the M = 16 table (decode vs prefill bodies) at the goal layer")
    ap.add_argument("--all-widths", action="store_true", help="compile time of each default body's all-widths kernel")
    ap.add_argument("--f16x2", action="store_true", help="only the fp16x2 field-arithmetic probe (next step for the gemv)")
    args = ap.parse_args(argv)
    print(f"# triton {triton.__version__}  target sm_{args.cc}")
    if args.goal:
        return 1 if goal_report(args.cc, args.goal_family) else 0
    if args.all_widths:
        return 1 if all_widths_report(args.cc) else 0
    if args.m16:
        return 1 if m16_report(args.cc) else 0
    if args.f16x2:
        for paired in (False, True):
            r = f16x2_probe(args.cc, paired)
            print(f"f16x2 probe, {'pre-paired' if paired else 'split halves'}: {r['alu_per_field']:.2f} ALU "
                  f"instructions per 2-bit field; SASS {r['ops']}")
        return 0
    failures = 0
    todo = [k for k in (QUICK if args.quick else KERNELS) if not args.family or k[0] in args.family]
    for k in todo:
        fam, widths, bm, bn, bk, sk, warps, stages, dtype = k[:9]
        extra = dict(k[9]) if len(k) > 9 else None
        cp = extra.pop("col_perm", True) if extra else True  # dequant's pregather rows: False
        try:
            r = compile_kernel(*k[:9], extra=extra, cc=args.cc, col_perm=cp)
            knobs = (f" U{r['u']} ALIGNED{int(bool(extra.get('aligned')))} PIPE{int(stages >= 2)}"
                     if fam in GEMVU_LIKE else "")
            # dequant is a store stream: its store widths decide its bandwidth
            stores = f" {r['stores']}{'' if cp else ' (pregather: no col_perm)'}" if fam == dequant.FAMILY else ""
            print(f"OK   {fam:<7} w{widths!s:<26} {dtype} BM{bm} BN{bn} BK{bk} SK{sk} warps{r['warps']} st{stages}"
                  f"{knobs}: {r['seconds']:.1f}s smem {r['shared']} regs {r['regs']} spills {r['spills']} "
                  f"I2F {r['i2f']} mma {r['mma']} LOP3 {r['lop3']} FADD {r['fadd']} FFMA {r['ffma']} {r['loads']}{stores}",
                  flush=True)
        except Exception as e:  # noqa: BLE001
            failures += 1
            print(f"FAIL {fam} {widths} {dtype}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
