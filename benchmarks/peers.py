"""Peer weight-only GPU kernels, timed beside SFMP in the same run and shapes (GPU only).

Peers: torchao's int4 weight-only (``Int4WeightOnlyConfig``, group 128, the ``tile_packed_to_4d``
format that runs torch's tinygemm ``_weight_int4pack_mm``; it takes bf16 activations only) and
gemlite's A16W4 (group 128, fp16 activations; gemlite has no 3-bit path: its Triton kernels take
1/2/4/8-bit weights, so a "gemlite 3-bit" row says so). The GPU machine reaches no package registry:
``benchmarks/peer_wheels.py`` puts their wheels in ``.whl/peers/`` here, ``device_check.sh`` installs
them with ``pip --no-index --no-deps --target`` on the device. A peer that is missing or fails to
build against the device's torch/triton yields a row with ``why`` instead of a time.

Codes are random (speed does not depend on their values), so no peer pays a quantization pass.
Each peer's ``make()`` builds one fresh set of operands and returns the call over it, the form
``kernels.time_cold`` rotates through to keep L2 cold, exactly as for SFMP and fp16.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

GROUP = 128


@dataclass
class Peer:
    """One peer at one (N, K, M): ``make() -> call`` (fresh operands each time) and the bytes one call
    must move, or ``why`` it cannot run here ("" when it can)."""

    name: str
    make: Callable[[], Callable[[], torch.Tensor]] | None
    bytes_per_call: int
    act_dtype: str
    why: str = ""


def _version(mod: str) -> str:
    try:
        return getattr(importlib.import_module(mod), "__version__", "?")
    except Exception as e:  # noqa: BLE001 - any import failure is a reason, reported as such
        return f"not installed: {type(e).__name__}: {str(e)[:200]}"


def versions() -> dict:
    """Peer package versions (or why not importable), for the JSON's meta."""
    return {m: _version(m) for m in ("torchao", "gemlite")}


def _torchao_linear(N: int, K: int, dev) -> torch.nn.Module:
    from torchao.quantization import Int4WeightOnlyConfig, quantize_
    lin = torch.nn.Linear(K, N, bias=False, device=dev, dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02)
    quantize_(lin, Int4WeightOnlyConfig(group_size=GROUP, int4_packing_format="tile_packed_to_4d"))
    return lin


def _gemlite_linear(N: int, K: int, bits: int, dev) -> torch.nn.Module:
    import gemlite
    from gemlite.helper import A16Wn
    _gemlite_configs(gemlite)
    W_q = torch.randint(0, 2 ** bits, (N, K), device=dev, dtype=torch.uint8)
    scales = (torch.rand(N, K // GROUP, device=dev) * 0.01 + 1e-3).half()
    zeros = torch.randint(0, 2 ** bits, (N, K // GROUP), device=dev).half()
    return A16Wn(device=str(dev), dtype=torch.float16).from_weights(W_q, scales, zeros, W_nbits=bits,
                                                                   group_size=GROUP)


_configs_loaded = False


def _gemlite_configs(gemlite) -> None:
    """gemlite ships tuned tile tables per GPU name (configs/h100.json, ...) and matches them by
    substring: "NVIDIA H200" matches none, so an H200 loads the H100 table (same SM) instead of
    autotuning inside the timed run."""
    global _configs_loaded
    if _configs_loaded:
        return
    _configs_loaded = True
    name = torch.cuda.get_device_name().lower()
    root = Path(gemlite.__file__).parent / "configs"
    if "h200" in name and (root / "h100.json").exists():
        gemlite.GemLiteLinear.load_config(str(root / "h100.json"))


def _probe(build: Callable[[], torch.nn.Module], x: torch.Tensor) -> str:
    """"" if one layer builds and runs on ``x``, else why not (short)."""
    try:
        y = build()(x)
        torch.cuda.synchronize()
        return "" if y.shape[-1] > 0 and bool(torch.isfinite(y.float()).all()) else "non-finite output"
    except Exception as e:  # noqa: BLE001 - a peer that fails on this device is reported, not fatal
        return f"failed: {type(e).__name__}: {str(e)[:300]}"


def gpu_peers(N: int, K: int, M: int, dev) -> list[Peer]:
    """The peers at one shape: each probed once (build + one call), then offered for timing."""
    out = []
    if os.environ.get("SFMP_NO_PEERS"):
        return out
    xb = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    xh = xb.half()
    io = (M * K + M * N) * 2
    packed4 = N * K // 2 + 2 * (N * K // GROUP) * 2  # int4 codes + 16-bit scale and zero per group

    v = _version("torchao")
    if v.startswith("not installed"):
        out.append(Peer("torchao int4wo g128", None, 0, "bf16", v))
    else:
        why = _probe(lambda: _torchao_linear(N, K, dev), xb) if K % GROUP == 0 else f"K % {GROUP} != 0"

        def make_ao():
            lin, xc = _torchao_linear(N, K, dev), xb.clone()
            return lambda: lin(xc)
        out.append(Peer("torchao int4wo g128", None if why else make_ao, packed4 + io, "bf16", why))

    v = _version("gemlite")
    for bits in (4, 3):
        name = f"gemlite A16W{bits} g128"
        if v.startswith("not installed"):
            out.append(Peer(name, None, 0, "fp16", v))
            continue
        if bits == 3:
            out.append(Peer(name, None, 0, "fp16", "no 3-bit path: gemlite's Triton kernels take 1/2/4/8-bit weights"))
            continue
        why = _probe(lambda: _gemlite_linear(N, K, bits, dev), xh)

        def make_gl(bits=bits):
            lin, xc = _gemlite_linear(N, K, bits, dev), xh.clone()
            return lambda: lin(xc)
        out.append(Peer(name, None if why else make_gl, N * K * bits // 8 + 2 * (N * K // GROUP) * 2 + io, "fp16", why))
    return out


def time_peers(N: int, K: int, M: int, dev, t_fp16: float, copy_bw: float, tag: str, time_cold) -> dict:
    """{peer name: {ms, gbs, pct_copy_bw, speedup_vs_fp16, act_dtype} or {why, act_dtype}}, each
    peer timed L2-cold like SFMP by ``time_cold(make, bytes, dev)`` (kernels.time_cold)."""
    out = {}
    for peer in gpu_peers(N, K, M, dev):
        row = dict(act_dtype=peer.act_dtype)
        if peer.make is not None:
            try:
                t = time_cold(peer.make, peer.bytes_per_call, dev)
                gbs = peer.bytes_per_call / (t * 1e-3) / 1e9
                row.update(ms=t, gbs=gbs, pct_copy_bw=100 * gbs / copy_bw, speedup_vs_fp16=t_fp16 / t)
            except Exception as e:  # noqa: BLE001 - a peer failing mid-run is a row, not a crash
                peer.why = f"failed while timing: {type(e).__name__}: {str(e)[:200]}"
        if peer.why:
            row["why"] = peer.why
            print(f"{tag:<5} {N:>6}x{K:<6}      M={M:<5} {peer.name}: {peer.why}", flush=True)
        else:
            print(f"{tag:<5} {N:>6}x{K:<6}      M={M:<5} {peer.name} {row['ms'] * 1e3:9.1f} us  {row['gbs']:7.0f} GB/s "
                  f"({row['pct_copy_bw']:5.1f}%)  x{row['speedup_vs_fp16']:.2f} fp16", flush=True)
        out[peer.name] = row
    return out
