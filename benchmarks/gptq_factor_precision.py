"""fp32 vs fp64 factorisation of GPTQ's Hessian: the GPTQ objective ‖X (W − Ŵ)ᵀ‖² / ‖X Wᵀ‖² on small
down_proj-like layers (heavy-tailed channel scales, a few outlier channels, rank-deficient H from
256 tokens), one line per seed. Fast (about a minute on one thread); the full 4096 × 14336 layer is
benchmarks/gptq_memory.py.

  python benchmarks/gptq_factor_precision.py [--seeds 6] [--shape 128x1024]
"""
import argparse

import torch

from sfmp_compile.quantizers.gptq import gptq_quantize
from sfmp_compile.quantizers.minmax import dequantize_groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--shape", default="128x1024")
    ap.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    torch.set_num_threads(1)
    N, K = (int(d) for d in a.shape.split("x"))
    gs = 128
    for seed in range(a.seeds):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(N, K, generator=g) * 0.02
        scale = torch.randn(K, generator=g).mul_(0.75).exp_()
        scale[torch.randperm(K, generator=g)[:8]] *= 30
        x = torch.randn(a.tokens, K, generator=g) * scale
        h = 2 * x.t() @ x / a.tokens
        gb = torch.tensor([2, 3, 4])[torch.randint(0, 3, (N, -(-K // gs)), generator=g)]
        err = {}
        for name, dt in (("fp32", torch.float32), ("fp64", torch.float64)):
            wq = dequantize_groups(*gptq_quantize(w, gb, gs, h, factor_dtype=dt), gs)
            err[name] = float((x @ (w - wq).t()).pow(2).sum() / (x @ w.t()).pow(2).sum())
        print(f"seed {seed}: fp32 {err['fp32']:.6e}  fp64 {err['fp64']:.6e}  fp32/fp64 {err['fp32'] / err['fp64']:.5f}",
              flush=True)


if __name__ == "__main__":
    main()
