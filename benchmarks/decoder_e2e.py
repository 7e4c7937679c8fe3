"""End to end: a Llama-3-8B-shaped decoder, dense vs SFMP at 3.0 BPW (and peers), in tokens/s.

    python benchmarks/decoder_e2e.py --json out.json          # GPU (benchmarks/device_check.sh runs it)
    python benchmarks/decoder_e2e.py --tiny --json out.json   # CPU dry run of every code path (seconds)

The model: 32 decoder layers (hidden 4096, intermediate 14336, 32 query heads / 8 KV heads of 128,
RMSNorm, RoPE, GQA attention through SDPA, SwiGLU MLP; 7 linears per layer, no bias), built on the
device with random weights, without the embedding and the LM head (the decoder is what the methods
differ in; the 1 GB bf16 head would be the same for all). Methods, each under torch.compile:
  dense    nn.Linear in the model dtype (bf16 by default);
  sfmp     SFMPLinear layers at 3.0 BPW (2/3-bit blocks of 512 rows x 128 columns, random row and
           column permutations, ``sfmp::linear_triton``): built from synthetic layers (real format-v1
           metadata, random codes: benchmarks/synthetic.py) instead of a calibration and quantization
           pass, so the model exists in seconds; kernel speed does not depend on code values;
  peers    torchao int4 weight-only (g128, tinygemm) and gemlite A16W4 (g128, random codes) where
           they install (benchmarks/peers.py); otherwise a row with ``why``.
Compilation is regional: each decoder layer's forward is compiled once per input shape (Dynamo
reuses the graph for all 32 layers) with Inductor; ``--sfmp-backend`` compiles the SFMP layers with
``sfmp_backend`` instead (its permutation folding; it compiles one graph per layer, GraphVariants).
Decode: one token per sequence, batch 1 and 16, attending over a 512-token KV cache (static
[B, 8, 512, 128] tensors per layer, the new token written into the last slot), the 32-layer step
captured as one CUDA graph where capture works (``graph`` in the row), timed over replays; prefill:
one 2048-token sequence, causal attention. Timing: CUDA events, median of repeats after warm-up.

JSON: meta: device, torch, triton, dtype, model (layers, hidden, intermediate, heads, kv_heads,
        head_dim), kv_cache, prefill_tokens, batches, bpw, compile, sfmp_layers, peers, tiny, wall_s;
      rows: method, phase ("decode" | "prefill"), batch, tokens, ms, tokens_per_s, speedup_vs_dense,
        weight_bytes, graph (decode: CUDA-graph replay or not), why (a method that did not run).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sfmp_compile.format import PackedWeight  # noqa: E402
from sfmp_compile.linear import SFMPLinear  # noqa: E402
import peers  # noqa: E402
from synthetic import layer as synthetic_layer  # noqa: E402


@dataclass(frozen=True)
class Shape:
    layers: int = 32
    hidden: int = 4096
    intermediate: int = 14336
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128


LLAMA3_8B = Shape()
TINY = Shape(layers=2, hidden=256, intermediate=512, heads=4, kv_heads=2, head_dim=64)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_shapes(s: Shape) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of each linear of a layer."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return dict(q_proj=(q, s.hidden), k_proj=(kv, s.hidden), v_proj=(kv, s.hidden), o_proj=(s.hidden, q),
                gate_proj=(s.intermediate, s.hidden), up_proj=(s.intermediate, s.hidden),
                down_proj=(s.hidden, s.intermediate))


class DecoderLayer(nn.Module):
    """One Llama decoder layer. forward(x [B, T, hidden], cos/sin [T, head_dim], kv: (k, v) caches
    [B, kv_heads, L, head_dim] with the T new tokens written at slots ``slot`` (int64 [T]), or None
    for causal attention over x alone) -> [B, T, hidden]."""

    def __init__(self, s: Shape, linears: dict[str, nn.Module], dev, dtype):
        super().__init__()
        self.s = s
        for name in LINEARS:
            setattr(self, name, linears[name])
        self.ln1 = nn.Parameter(torch.ones(s.hidden, device=dev, dtype=dtype), requires_grad=False)
        self.ln2 = nn.Parameter(torch.ones(s.hidden, device=dev, dtype=dtype), requires_grad=False)

    def forward(self, x, cos, sin, k_cache=None, v_cache=None, slot=None):
        s, (B, T, _) = self.s, x.shape
        h = F.rms_norm(x, (s.hidden,), self.ln1, 1e-5)
        q = self.q_proj(h).view(B, T, s.heads, s.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(B, T, s.kv_heads, s.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(B, T, s.kv_heads, s.head_dim).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if k_cache is not None:
            k_cache.index_copy_(2, slot, k)
            v_cache.index_copy_(2, slot, v)
            a = F.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, T, s.heads * s.head_dim))
        h = F.rms_norm(x, (s.hidden,), self.ln2, 1e-5)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


def rope(t, cos, sin):
    half = t.shape[-1] // 2
    rot = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
    return t * cos + rot * sin


def rope_tables(positions: torch.Tensor, head_dim: int, dtype):
    inv = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    f = positions.float()[:, None] * inv[None, :]
    emb = torch.cat((f, f), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


# --- building the methods' layers -------------------------------------------------------------------

def dense_linears(s: Shape, dev, dtype) -> dict[str, nn.Module]:
    out = {}
    for name, (N, K) in linear_shapes(s).items():
        lin = nn.Linear(K, N, bias=False, device=dev, dtype=dtype)
        with torch.no_grad():
            lin.weight.normal_(0, 0.02)
        lin.weight.requires_grad_(False)
        out[name] = lin
    return out


class SFMPFactory:
    """SFMPLinear layers from one synthetic template per shape (its metadata built once on the CPU);
    every layer gets its own copy on the device with fresh random code words."""

    def __init__(self, s: Shape, bpw: float, cpu_kernel: str):
        self.templates = {shape: synthetic_layer(*shape, bpw) for shape in set(linear_shapes(s).values())}
        self.shapes, self.cpu_kernel = linear_shapes(s), cpu_kernel

    def __call__(self, dev) -> dict[str, nn.Module]:
        out = {}
        for name, shape in self.shapes.items():
            p = self.templates[shape]
            t = {k: v.to(dev, copy=True) for k, v in p.tensors().items() if k != "qweight"}
            t["qweight"] = torch.randint(-2**31, 2**31 - 1, p.qweight.shape, device=dev, dtype=torch.int32)
            out[name] = SFMPLinear(PackedWeight(**t, **p.meta())).prepare_for(dev, cpu_kernel=self.cpu_kernel)
        return out


def build(method: str, s: Shape, dev, dtype, sfmp: SFMPFactory) -> nn.ModuleList:
    """The 32 (or --tiny's) layers of one method, on ``dev``; raises with a reason if it cannot."""
    layers = nn.ModuleList()
    for i in range(s.layers):
        if method == "sfmp":
            lin = sfmp(dev)
        elif method == "gemlite A16W4":
            lin = {n: peers._gemlite_linear(N, K, 4, dev) for n, (N, K) in linear_shapes(s).items()}
        else:
            lin = dense_linears(s, dev, dtype)
        layers.append(DecoderLayer(s, lin, dev, dtype))
    if method == "torchao int4wo":
        if dtype != torch.bfloat16:
            raise RuntimeError("torchao's int4 weight-only (tinygemm) takes bf16 only")
        from torchao.quantization import Int4WeightOnlyConfig, quantize_
        quantize_(layers, Int4WeightOnlyConfig(group_size=peers.GROUP, int4_packing_format="tile_packed_to_4d"))
    return layers


def weight_bytes(layers: nn.Module) -> int | None:
    try:
        return sum(t.numel() * t.element_size() for m in layers.modules()
                   for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
                   if type(t) in (torch.Tensor, nn.Parameter))
    except Exception:  # noqa: BLE001 - tensor subclasses (torchao) report sizes their own way
        return None


# --- timing --------------------------------------------------------------------------------------

def _timed(fn, reps: int, cuda: bool) -> float:
    """Median ms of ``reps`` calls of fn after two warm-up calls."""
    fn(), fn()
    ts = []
    for _ in range(reps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def run_method(method: str, layers: nn.ModuleList, args, s: Shape, dev, dtype) -> list[dict]:
    cuda = dev.type == "cuda"
    backend = args.compile_backend
    if method == "sfmp" and args.sfmp_backend:
        from sfmp_compile import sfmp_backend
        backend = sfmp_backend(bits=args.bpw, inner=args.compile_backend,
                               **({} if cuda else {"cpu_kernel": "reference"}))
    for m in layers:
        m.compile(backend=backend, dynamic=False)
    rows, wb = [], weight_bytes(layers)
    L = args.kv_cache
    with torch.inference_mode():
        for B in args.batches:
            caches = [(torch.randn(B, s.kv_heads, L, s.head_dim, device=dev, dtype=dtype),
                       torch.randn(B, s.kv_heads, L, s.head_dim, device=dev, dtype=dtype)) for _ in layers]
            x = torch.randn(B, 1, s.hidden, device=dev, dtype=dtype)
            slot = torch.tensor([L - 1], device=dev)
            cos, sin = rope_tables(torch.tensor([L - 1], device=dev), s.head_dim, dtype)

            def step():
                h = x
                for m, (kc, vc) in zip(layers, caches):
                    h = m(h, cos, sin, kc, vc, slot)
                return h
            fn, graph = step, False
            if cuda:
                step(), step()  # compile and warm up outside the capture
                torch.cuda.synchronize()
                try:
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g):
                        step()
                    fn, graph = g.replay, True
                except Exception as e:  # noqa: BLE001 - capture can fail; time the compiled step itself
                    graph = f"no CUDA graph: {type(e).__name__}: {str(e)[:200]}"
            ms = _timed(fn, args.reps, cuda)
            rows.append(dict(method=method, phase="decode", batch=B, tokens=B, ms=ms, tokens_per_s=B / (ms * 1e-3),
                             weight_bytes=wb, graph=graph))
            print(f"{method:<16} decode  B={B:<3} {ms:9.2f} ms/step  {B / (ms * 1e-3):9.1f} tok/s  graph={graph}",
                  flush=True)
        T = args.prefill
        x = torch.randn(1, T, s.hidden, device=dev, dtype=dtype)
        cos, sin = rope_tables(torch.arange(T, device=dev), s.head_dim, dtype)

        def prefill():
            h = x
            for m in layers:
                h = m(h, cos, sin)
            return h
        ms = _timed(prefill, max(2, args.reps // 4), cuda)
        rows.append(dict(method=method, phase="prefill", batch=1, tokens=T, ms=ms, tokens_per_s=T / (ms * 1e-3),
                         weight_bytes=wb, graph=False))
        print(f"{method:<16} prefill T={T:<5} {ms:9.2f} ms  {T / (ms * 1e-3):9.1f} tok/s", flush=True)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write the JSON here")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run: 2 small layers, every method's code path")
    ap.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    ap.add_argument("--bpw", type=float, default=3.0)
    ap.add_argument("--methods", default="dense,sfmp,torchao int4wo,gemlite A16W4")
    ap.add_argument("--batches", type=lambda v: [int(b) for b in v.split(",")], default=None)
    ap.add_argument("--kv-cache", type=int, default=None)
    ap.add_argument("--prefill", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; --tiny: aot_eager)")
    ap.add_argument("--sfmp-backend", action="store_true", help="compile the SFMP layers with sfmp_backend")
    args = ap.parse_args(argv)
    tiny = args.tiny
    s = TINY if tiny else LLAMA3_8B
    dev = torch.device("cpu" if tiny else "cuda")
    if not tiny and not torch.cuda.is_available():
        raise SystemExit("decoder_e2e needs a CUDA GPU (or --tiny for the CPU dry run)")
    if tiny:
        torch.set_num_threads(1)  # two intra-op threads on a shared 2-core machine stall every op
    dtype = getattr(torch, args.dtype)
    args.batches = args.batches or ([1, 2] if tiny else [1, 16])
    args.kv_cache = args.kv_cache or (16 if tiny else 512)
    args.prefill = args.prefill or (32 if tiny else 2048)
    args.reps = args.reps or (2 if tiny else 20)
    args.compile_backend = args.compile_backend or ("aot_eager" if tiny else "inductor")
    t0 = time.time()
    sfmp = SFMPFactory(s, args.bpw, "reference" if tiny else "packed")
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        try:
            if tiny and method in ("torchao int4wo", "gemlite A16W4"):
                raise RuntimeError("GPU peer: not run in the --tiny CPU dry run")
            layers = build(method, s, dev, dtype, sfmp)
            rows += run_method(method, layers, args, s, dev, dtype)
            del layers
        except Exception as e:  # noqa: BLE001 - one method failing (a peer missing) is a row, not a crash
            why = f"{type(e).__name__}: {str(e)[:300]}"
            rows.append(dict(method=method, phase=None, why=why))
            print(f"{method:<16} not run: {why}", flush=True)
        if args.json:  # a run cut short by its time limit keeps the finished methods
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(dict(meta=dict(partial=True), rows=rows), indent=1))
        torch._dynamo.reset()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    dense = {(r["phase"], r["batch"]): r["ms"] for r in rows if r["method"] == "dense" and "ms" in r}
    for r in rows:
        if "ms" in r and (r["phase"], r["batch"]) in dense:
            r["speedup_vs_dense"] = dense[(r["phase"], r["batch"])] / r["ms"]
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = None
    result = dict(meta=dict(device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (--tiny)",
                            torch=torch.__version__, triton=tv, dtype=args.dtype, model=asdict(s),
                            kv_cache=args.kv_cache, prefill_tokens=args.prefill, batches=args.batches, bpw=args.bpw,
                            compile=f"regional torch.compile per decoder layer, backend {args.compile_backend}"
                                    + (", SFMP layers through sfmp_backend" if args.sfmp_backend else ""),
                            sfmp_layers="synthetic format-v1 layers (random codes, real metadata, random perms)",
                            peers=peers.versions() if not tiny else "not run (--tiny)", tiny=tiny,
                            wall_s=round(time.time() - t0, 1)), rows=rows)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"# wrote {args.json} ({len(rows)} rows, {result['meta']['wall_s']} s)")
    return result


if __name__ == "__main__":
    main()
