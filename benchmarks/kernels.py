"""SFMP mixed-precision GEMM benchmark: kernels vs dense baselines, one device, one run.

Shapes are Llama-3-8B linears named N x K = (out_features, in_features):
  4096x4096 (q/o_proj), 4096x14336 (down_proj), 14336x4096 (gate/up_proj), 1024x4096 (k/v_proj).
BPW counts code bits + fp16 scale and zero per 128-column group (0.25): BPW 2.5 / 3.0 / 3.5 / 4.0 =
code bits 2.25 / 2.75 / 3.25 / 3.75, i.e. a random 75/25, 25/75 mix of 2/3-bit blocks, then of
3/4-bit blocks (blocks 512 rows x 128 columns, random row and column permutations as SFMP makes).

GPU (default when CUDA is available): fp16 activations, M in {1, 16, 128, 2048}; per case: time
(CUDA-graph replay, so Triton's Python launch cost is excluded for every method alike), achieved
GB/s on the bytes a call must move (all packed tensors + x + y) and % of the measured device copy
bandwidth, TFLOP/s, speedup vs torch.matmul fp16 and vs dequantize-then-matmul (uint8 codes ->
fp16 weight in torch -> matmul; the reference SFMP's prefill strategy), and the peers
(torchao int4 weight-only, gemlite 4-bit; benchmarks/peers.py) x fp16 and % of copy bandwidth. ``--tune`` autotunes the
3.0-BPW down_proj cases first (time-boxed by ``--tune-budget``); others reuse the nearest tuned
entry or the shipped defaults. Which body serves M = 1 is configuration: by default the tuned /
shipped tables decide (a tile ``Config`` may name ``family="gemvu"``) and ``--tune`` compares the
gemv and gemvu config spaces together (``codegen.autotune.candidate_configs("gemv", ...)``).
``--gemv-family gemv|gemvu`` forces one body at M = 1 for an A/B: the config is the table's when it
names that family, else that family's tuned best (``--tune`` then searches only its space, and the
result stays in memory: it never enters the autotune JSON) or its ``FALLBACK``.

CPU (default without CUDA): 1 thread, min of repeats; the sfmp CPU int4 path vs fp32 and bf16
F.linear, on the Llama shapes that fit in time plus SmolLM2-135M's shapes. ``--quick`` is a smoke
run (SmolLM2 shapes + 4096x4096, 3.0 BPW, M in {1, 128}).

Writes a table to stdout and JSON to --json (default benchmarks/kernels.json):
  meta: device, torch, triton, timing, naming, wall_s; GPU also copy_bandwidth_gbs, l2_bytes,
        l2_cold_factor (timing says how L2 is kept cold), dtype,
        gemv_family (the --gemv-family setting: "gemv", "gemvu", "gemvh", or "auto" = tables/tuner decide),
        distinct_kernel_sources, tuned_cache; CPU also threads, path.
  rows (GPU): N, K, bpw, widths, M, family (the M bucket's), gemv_family (the body that ran an
        M = 1 row, null for M > 1), config (Config.to_dict; carries "family" when not the
        bucket's), ms, ms_fp16, ms_dequant_matmul, bytes_moved, gbs, pct_copy_bw, tflops,
        speedup_vs_fp16, speedup_vs_dequant, ms_dequant_cublas and dequant_cublas_vs_fp16 (the
        dequant kernel + one cuBLAS GEMM that sfmp::linear_triton runs from PREFILL_DEQUANT_M rows
        on; null below that M), peers ({name: {ms, gbs, pct_copy_bw, speedup_vs_fp16, act_dtype}, or
        {why, act_dtype} when it is not installed or fails on the device}: benchmarks/peers.py).
  meta (GPU) also: peers (the peer packages' versions, or why not importable).
  rows (CPU): N, K, bpw, widths, M, ms, ms_fp32, ms_bf16, ms_dequant_matmul, bytes_moved, gbs,
        tflops, speedup_vs_fp32, speedup_vs_bf16, speedup_vs_dequant_matmul, resident_bits_per_weight.
(The gemv_family keys replace the variant / kernel_variant keys of runs before the kernel
families were consolidated: benchmarks/kernels_h200_v*.json.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/synthetic.py, benchmarks/peers.py

from sfmp_compile.format import PackedWeight  # noqa: E402
from synthetic import BLOCK_ROWS, GROUP, layer, self_check, widths_of  # noqa: E402  (benchmarks/synthetic.py)
import peers  # noqa: E402  (benchmarks/peers.py)

LLAMA_SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (1024, 4096)]
SMOL_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
BPWS = [2.5, 3.0, 3.5, 4.0]
GPU_MS = [1, 16, 128, 2048]
CPU_MS = [1, 16, 128, 512]  # 512: the prefill switch (dequantize + bf16 GEMM), where it fits
TUNE_SHAPE, TUNE_BPW = (4096, 14336), 3.0  # the decode goal case: down_proj at 3.0 BPW


# --- timing ----------------------------------------------------------------------------------------

def time_cpu(fn, budget_s=0.6, max_reps=50) -> float:
    """Min wall time in ms over repeats (1 thread is noisy on shared machines; min is stable)."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    reps = max(3, min(max_reps, int(budget_s / max(once, 1e-6))))
    best = once
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def time_gpu(fn) -> float:
    import triton.testing
    fn()
    torch.cuda.synchronize()
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=30))
    except Exception:  # noqa: BLE001 - capture can fail; fall back to event timing
        return float(triton.testing.do_bench(fn, rep=30))


L2_COLD_FACTOR = 4  # one timed pass touches >= this many L2 sizes of distinct operands


def l2_bytes(dev) -> int:
    return int(getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 50 << 20) or 50 << 20)


def time_cold(make, bytes_per_call: int, dev) -> float:
    """ms per call with operands that are not in L2: ``make()`` builds one fresh set of operands and
    returns the call over it; enough sets are built that one pass over them touches >= L2_COLD_FACTOR
    x the L2 size, the timed function runs them all and the time is divided by their number. Every
    method is timed this way, so a 22 MB 3-bit weight is not served from the 50 MB L2 while its
    117 MB fp16 twin streams from HBM."""
    n = max(1, -(-L2_COLD_FACTOR * l2_bytes(dev) // max(1, bytes_per_call)))
    calls = [make() for _ in range(n)]
    return time_gpu(lambda: [c() for c in calls]) / n


def copy_bandwidth_gbs() -> float:
    n = 1 << 28  # 1 GiB of fp32
    a = torch.empty(n // 4, device="cuda")
    b = torch.empty_like(a)
    ms = time_gpu(lambda: b.copy_(a))
    return 2 * n / (ms * 1e-3) / 1e9


# --- GPU ------------------------------------------------------------------------------------------

def save_partial(path: str, rows: list) -> None:
    """The rows so far, meta {"partial": true}; the finished run overwrites it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(dict(meta=dict(partial=True), rows=rows), indent=1))


def _cfg_str(cfg) -> str:
    return (f"BN{cfg.BLOCK_N} BM{cfg.BLOCK_M} BK{cfg.BLOCK_K} SK{cfg.SPLIT_K} w{cfg.num_warps} "
            f"st{cfg.num_stages}{' pg' if cfg.pregather else ''}{f' U{cfg.U}' if cfg.U != 1 else ''}")


def pick_config(args, fam: str, M: int, N: int, K: int, widths, dtype, dev, tuned: dict):
    """The config a case runs: the tables' (autotune.get_config), except that ``--gemv-family``
    forces the body of the gemv bucket (its tuned best in this run, else its FALLBACK)."""
    from sfmp_compile.codegen import FAMILIES, autotune
    cfg = autotune.get_config(fam, M, N, K, widths, GROUP, BLOCK_ROWS, dtype, dev)
    want = args.gemv_family
    if fam == "gemv" and want and (cfg.family or fam) != want:
        cfg = tuned.get(M) or FAMILIES[want].FALLBACK
    return cfg


def tune_one_family(run_cfg, family: str, M: int, N: int, K: int, widths, dtype, budget_s: float):
    """autotune.tune restricted to ONE family serving the gemv bucket (for ``--gemv-family``): its
    FALLBACK first, then its configs of ``candidate_configs("gemv", ...)``, time-boxed; returns
    (best config, ms). Not saved to the tuned table, so a forced A/B never changes what the
    package picks."""
    from sfmp_compile.codegen import FAMILIES, autotune
    space = [c for c in autotune.candidate_configs("gemv", M, N, K, GROUP, BLOCK_ROWS, True)
             if (c.family or "gemv") == family]
    first = FAMILIES[family].FALLBACK
    best, best_ms = autotune.search(run_cfg, [first] + [c for c in space if c != first], budget_s, time_gpu)
    return best or first, best_ms


def run_gpu(args) -> dict:
    import triton

    from sfmp_compile.codegen import KernelLayer, autotune, distinct_kernels, family_for, launch
    from sfmp_compile.ops.triton import PREFILL_DEQUANT_M
    from sfmp_compile.format import layout_aligned4
    from sfmp_compile.ops.reference import packed_args

    dev = torch.device("cuda")
    dtype = torch.float16
    copy_bw = copy_bandwidth_gbs()
    print(f"# device {torch.cuda.get_device_name(dev)}  copy bandwidth {copy_bw:.0f} GB/s  "
          f"torch {torch.__version__}  triton {triton.__version__}")
    shapes = LLAMA_SHAPES if not args.quick else [(4096, 14336)]
    bpws = BPWS if not args.quick else [3.0]
    ms_list = GPU_MS if not args.quick else [1, 2048]
    shapes, bpws, ms_list = args.shapes or shapes, args.bpws or bpws, args.ms or ms_list
    tag = args.gemv_family or "auto"
    print(f"# gemv family {tag} ({'forced at M = 1' if args.gemv_family else 'tables/tuner decide'})  "
          f"cache {os.environ.get('SFMP_CACHE_DIR', '~/.cache/sfmp_compile')}", flush=True)
    rows = []
    tuned: dict = {}  # M -> best config of the forced gemv family (--gemv-family with --tune)

    def run(x, p, widths, fam, cfg, aligned4):
        # aligned4 computed once per layer: left None, launch would check it (a device sync) per call
        return launch(x, KernelLayer(*packed_args(p)), widths, family=fam, config=cfg, aligned4=aligned4)

    # Correctness spot check on a real-size layer against the reference (eager, fp32 math).
    p = layer(1024, 4096, 3.0).to(dev)
    a4 = layout_aligned4(p.block_offset, p.out_features, p.block_rows)
    for M in (1, 16, 128):
        x = torch.randn(M, p.in_features, device=dev, dtype=dtype)
        fam = family_for(M)
        cfg = pick_config(args, fam, M, p.out_features, p.in_features, widths_of(p), dtype, dev, tuned)
        ref = torch.ops.sfmp.linear_ref(x.float(), *packed_args(p))
        y = run(x, p, widths_of(p), fam, cfg, a4).float()
        err = float((y - ref).abs().max() / ref.abs().max())
        print(f"# check {p.out_features}x{p.in_features} M={M} {cfg.family or fam}: max rel err vs reference {err:.2e}")
        if err > 1e-2:
            raise SystemExit(f"kernel disagrees with the reference (M={M}, {cfg.family or fam}, err {err:.2e})")

    # Autotune only the goal shape (down_proj 4096x14336 at 3.0 BPW), budget split over the M
    # buckets; every other case borrows the nearest tuned entry of its bucket (autotune.get_config).
    if args.tune:
        N, K = TUNE_SHAPE
        p = layer(N, K, TUNE_BPW).to(dev)
        a4 = layout_aligned4(p.block_offset, N, BLOCK_ROWS)
        widths = widths_of(p)
        for M in ms_list:
            x = torch.randn(M, K, device=dev, dtype=dtype)
            fam = family_for(M)

            def run_cfg(cfg, x=x, p=p, fam=fam, widths=widths):
                return run(x, p, widths, fam, cfg, a4)
            t0 = time.time()
            weight = {1: 0.35, 16: 0.15, 128: 0.15, 2048: 0.35}  # goal cases first
            share = weight.get(M, 0.15) / sum(weight.get(m, 0.15) for m in ms_list)
            if fam == "gemv" and args.gemv_family:
                best, ms = tune_one_family(run_cfg, args.gemv_family, M, N, K, widths, dtype,
                                           args.tune_budget * share)
                tuned[M] = best
                note = f"{args.gemv_family} only, {ms * 1e3:.1f} us, not saved"
            else:  # the package's tuner: at M = 1 gemv's and gemvu's config spaces together
                best = autotune.tune(run_cfg, fam, M, N, K, widths, GROUP, BLOCK_ROWS, dtype, dev,
                                     has_col_perm=True, budget_s=args.tune_budget * share)
                note = f"saved to {autotune.tuned_cache_path(dev).name}"
            print(f"# tuned {N}x{K} M={M} ({time.time() - t0:.0f} s, {note}): {best.to_dict()}", flush=True)
        del p

    for N, K, bpw in [(N, K, b) for N, K in shapes for b in bpws]:
        p = layer(N, K, bpw).to(dev)
        a4 = layout_aligned4(p.block_offset, N, BLOCK_ROWS)
        w16 = torch.randn(N, K, device=dev, dtype=dtype) * 0.02
        codes = torch.randint(0, 8, (N, K), device=dev, dtype=torch.uint8)
        s = p.scales.t().repeat_interleave(GROUP, 1)[:, :K].contiguous()
        z = p.zeros.t().repeat_interleave(GROUP, 1)[:, :K].contiguous()
        widths = widths_of(p)
        for M in ms_list:
            x = torch.randn(M, K, device=dev, dtype=dtype)
            fam = family_for(M)
            cfg = pick_config(args, fam, M, N, K, widths, dtype, dev, tuned)
            ran = cfg.family or fam
            xb = x.numel() * x.element_size()

            def fresh_p(p=p):
                return PackedWeight(**{k: v.clone() for k, v in p.tensors().items()}, **p.meta())

            def sfmp_call(fam=fam, cfg=cfg, x=x):
                pc, xc = fresh_p(), x.clone()
                return lambda: run(xc, pc, widths, fam, cfg, a4)
            t_sfmp = time_cold(sfmp_call, p.nbytes + xb, dev)

            def fp16_call(x=x, w16=w16):
                xc, wc = x.clone(), w16.clone()
                return lambda: torch.matmul(xc, wc.t())
            t_fp16 = time_cold(fp16_call, w16.numel() * 2 + xb, dev)

            def deq_call(x=x, codes=codes, z=z, s=s):
                xc, cc, zc, sc = x.clone(), codes.clone(), z.clone(), s.clone()
                return lambda: torch.matmul(xc, ((cc.to(dtype) - zc) * sc).t())
            t_deq = time_cold(deq_call, codes.numel() * 5 + xb, dev)
            # What sfmp::linear_triton runs from PREFILL_DEQUANT_M rows on: the dequant kernel + cuBLAS.
            t_dqc = (time_cold(lambda: sfmp_call(fam="dequant", cfg=None), p.nbytes + xb, dev)
                     if M >= PREFILL_DEQUANT_M else None)
            peer_rows = {} if args.no_peers else peers.time_peers(N, K, M, dev, t_fp16, copy_bw, tag, time_cold)
            moved = p.nbytes + (M * K + M * N) * 2
            rows.append(dict(
                N=N, K=K, bpw=bpw, widths=list(widths), M=M, family=fam,
                gemv_family=ran if fam == "gemv" else None, config=cfg.to_dict(),
                ms=t_sfmp, ms_fp16=t_fp16, ms_dequant_matmul=t_deq, bytes_moved=moved,
                gbs=moved / (t_sfmp * 1e-3) / 1e9, pct_copy_bw=100 * moved / (t_sfmp * 1e-3) / 1e9 / copy_bw,
                tflops=2 * M * N * K / (t_sfmp * 1e-3) / 1e12,
                speedup_vs_fp16=t_fp16 / t_sfmp, speedup_vs_dequant=t_deq / t_sfmp,
                ms_dequant_cublas=t_dqc, dequant_cublas_vs_fp16=t_fp16 / t_dqc if t_dqc else None,
                peers=peer_rows))
            r = rows[-1]
            save_partial(args.json, rows)  # a run cut short by its time limit keeps its finished rows
            # first column: the run's --gemv-family setting (device_check.sh's A/B summary greps it)
            print(f"{tag:<5} {N:>6}x{K:<6} {bpw:>4} M={M:<5} {ran:<7} {t_sfmp * 1e3:9.1f} us  {r['gbs']:7.0f} GB/s "
                  f"({r['pct_copy_bw']:5.1f}%)  {r['tflops']:7.1f} TF/s  x{r['speedup_vs_fp16']:.2f} fp16  "
                  f"x{r['speedup_vs_dequant']:.2f} deq  {_cfg_str(cfg)}", flush=True)
            if t_dqc:
                print(f"{tag:<5} {N:>6}x{K:<6} {bpw:>4} M={M:<5} dequant+cuBLAS {t_dqc * 1e3:9.1f} us  "
                      f"x{t_fp16 / t_dqc:.2f} fp16", flush=True)
        del p, w16, codes, s, z
        torch.cuda.empty_cache()
    return dict(meta=dict(device=torch.cuda.get_device_name(dev), copy_bandwidth_gbs=copy_bw,
                          torch=torch.__version__, triton=triton.__version__, dtype="float16",
                          gemv_family=tag,
                          timing="CUDA-graph replay (triton.testing.do_bench_cudagraph), L2-cold: every "
                                 f"method cycles through fresh operand copies touching >= {L2_COLD_FACTOR}x "
                                 "the L2 size per timed pass (time_cold); tuning timings are warm",
                          l2_bytes=l2_bytes(dev), l2_cold_factor=L2_COLD_FACTOR,
                          naming="N x K = (out_features, in_features)",
                          distinct_kernel_sources=distinct_kernels(),
                          peers="none (--no-peers)" if args.no_peers else peers.versions(),
                          tuned_cache=str(autotune.tuned_cache_path(dev))), rows=rows)


# --- CPU ------------------------------------------------------------------------------------------

def run_cpu(args) -> dict:
    from sfmp_compile.layouts import SFMPWeight
    from sfmp_compile.ops.cpu_int4 import linear_int4
    from sfmp_compile.ops.dispatch import KERNELS
    from sfmp_compile.ops.reference import linear_ref, packed_args

    torch.set_num_threads(1)
    F = torch.nn.functional
    if args.quick:
        cases = [(N, K) for N, K in SMOL_SHAPES] + [(4096, 4096)]
        bpws, ms_list = [3.0], [1, 128]
    else:
        cases = SMOL_SHAPES + LLAMA_SHAPES
        bpws, ms_list = BPWS, CPU_MS
    print(f"# CPU {platform.processor() or platform.machine()}  1 thread  torch {torch.__version__}  "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    rows = []
    for N, K in cases:
        w32 = torch.randn(N, K) * 0.02
        w16 = w32.to(torch.bfloat16)
        for bpw in bpws:
            p = layer(N, K, bpw)
            c = SFMPWeight.from_packed(p, "cpu")  # the "cpu" layout (rows and columns stay reordered)
            args_c = KERNELS["cpu"].args(c)  # (w4, sz, row_perm, col_perm, out_features, in_features, gc)
            w4, sz = c.data["w4"], c.data["sz"]
            bits_per_weight = 8 * c.nbytes / (N * K)  # everything the layout holds, permutations included
            ref_args = packed_args(p)
            for M in ms_list:
                if N * K * M > 4096 * 14336 * 128 and not args.quick:
                    continue
                x = torch.randn(M, K)
                xb = x.to(torch.bfloat16)
                t_sfmp = time_cpu(lambda: linear_int4(x, *args_c))
                t32 = time_cpu(lambda: F.linear(x, w32))
                t16 = time_cpu(lambda: F.linear(xb, w16))
                # dequantize-then-matmul: the exact reference op (unpack true-bit codes, fp32 weight, GEMM)
                t_deq = time_cpu(lambda: linear_ref(x, *ref_args), budget_s=0.3)
                moved = (w4.numel() + sz.numel() * 2 + (c.col_perm.numel() + c.row_perm.numel()) * 4
                         + (M * K + M * N) * 4)
                rows.append(dict(N=N, K=K, bpw=bpw, widths=list(widths_of(p)), M=M, ms=t_sfmp, ms_fp32=t32,
                                 ms_bf16=t16, bytes_moved=moved, gbs=moved / (t_sfmp * 1e-3) / 1e9,
                                 tflops=2 * M * N * K / (t_sfmp * 1e-3) / 1e12,
                                 ms_dequant_matmul=t_deq, speedup_vs_fp32=t32 / t_sfmp, speedup_vs_bf16=t16 / t_sfmp,
                                 speedup_vs_dequant_matmul=t_deq / t_sfmp,
                                 resident_bits_per_weight=bits_per_weight))
                r = rows[-1]
                print(f"{N:>6}x{K:<6} {bpw:>4} M={M:<4} sfmp {t_sfmp:8.3f} ms  fp32 {t32:8.3f}  bf16 {t16:8.3f}  "
                      f"deq+mm {t_deq:8.3f}  "
                      f"x{r['speedup_vs_fp32']:.2f} fp32  x{r['speedup_vs_bf16']:.2f} bf16  "
                      f"{r['gbs']:6.1f} GB/s  {bits_per_weight:.2f} b/w resident", flush=True)
    return dict(meta=dict(device=f"cpu ({torch.backends.cpu.get_cpu_capability()})", threads=1,
                          torch=torch.__version__, timing="min wall time over repeats",
                          naming="N x K = (out_features, in_features)",
                          path="sfmp::linear_cpu_int4 body in eager (ops.cpu_int4.linear_int4: gather x, bf16, torch "
                               "int4 CPU GEMM, scatter rows by row_perm; from M >= PREFILL_M_EAGER on "
                               "native-bf16 CPUs: dequantize to bf16 + one bf16 GEMM)"),
                rows=rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=str(Path(__file__).with_name("kernels.json")))
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--quick", action="store_true", help="fast smoke run")
    ap.add_argument("--tune", action="store_true", help="GPU: autotune before timing (time-boxed)")
    ap.add_argument("--tune-budget", type=float, default=120.0, help="seconds of autotuning in total")
    ap.add_argument("--gemv-family", choices=["gemv", "gemvu", "gemvh"], default=None,
                    help="GPU: force the body of the M = 1 bucket (an A/B). Default: the tuned/shipped "
                         "tables decide and --tune compares gemv's and gemvu's configs together. "
                         "gemvu = U groups per [U, words, rows] load, 128-bit loads where aligned, "
                         "split-K partials without atomics (opt-in, codegen/gemvu.py); gemvh = gemvu's "
                         "walk with fp16x2 field arithmetic (opt-in, codegen/gemvh.py).")
    ap.add_argument("--no-peers", action="store_true", help="GPU: skip the torchao / gemlite peers")
    ap.add_argument("--shapes", type=lambda s: [tuple(int(v) for v in t.split("x")) for t in s.split(",")],
                    default=None, help="GPU: NxK list, e.g. 4096x14336,4096x4096")
    ap.add_argument("--bpws", type=lambda s: [float(v) for v in s.split(",")], default=None,
                    help="GPU: BPW list, e.g. 3.0")
    ap.add_argument("--ms", type=lambda s: [int(v) for v in s.split(",")], default=None,
                    help="GPU: M list, e.g. 1,16,2048")
    args = ap.parse_args(argv)
    self_check()
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        os.environ.setdefault("TRITON_INTERPRET", "0")
    t0 = time.time()
    result = run_gpu(args) if dev == "cuda" else run_cpu(args)
    result["meta"]["wall_s"] = round(time.time() - t0, 1)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"# wrote {args.json} ({len(result['rows'])} rows, {result['meta']['wall_s']} s)")


if __name__ == "__main__":
    main()
