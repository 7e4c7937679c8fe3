"""The GPU benchmark scripts cannot rot on a machine without a GPU: their CPU dry runs and helpers.

benchmarks/decoder_e2e.py --tiny runs every code path of the end-to-end decoder benchmark (model,
SFMP layers from synthetic format-v1 layers, regional torch.compile, decode over a static KV cache,
prefill, the JSON) on two small layers; the GPU peers answer with a reason instead of a time.
"""
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import decoder_e2e  # noqa: E402
import peers  # noqa: E402
import synthetic  # noqa: E402

META_KEYS = {"device", "torch", "triton", "dtype", "model", "kv_cache", "prefill_tokens", "batches", "bpw",
             "compile", "sfmp_layers", "peers", "tiny", "wall_s"}
ROW_KEYS = {"method", "phase", "batch", "tokens", "ms", "tokens_per_s", "speedup_vs_dense", "weight_bytes", "graph"}


def test_decoder_tiny_dry_run(tmp_path):
    out = tmp_path / "e2e.json"
    threads = torch.get_num_threads()
    try:  # --tiny runs on one thread (faster on a shared machine); later tests keep theirs
        res = decoder_e2e.main(["--tiny", "--batches", "2", "--reps", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert out.exists() and set(res["meta"]) == META_KEYS
    ran = [r for r in res["rows"] if "ms" in r]
    assert {(r["method"], r["phase"]) for r in ran} == {(m, p) for m in ("dense", "sfmp") for p in ("decode", "prefill")}
    for r in ran:
        assert set(r) == ROW_KEYS and r["tokens_per_s"] > 0 and r["ms"] > 0
    by = {r["method"]: r for r in ran if r["phase"] == "decode"}
    # 3.0 BPW: the SFMP layers hold about 3/16 of the bf16 bytes (plus permutations and metadata)
    assert 0.15 < by["sfmp"]["weight_bytes"] / by["dense"]["weight_bytes"] < 0.3
    skipped = {r["method"]: r["why"] for r in res["rows"] if "ms" not in r}
    assert set(skipped) == {"torchao int4wo", "gemlite A16W4"} and all(skipped.values())


def test_decoder_layer_matches_a_plain_reference():
    # The benchmark's layer is a real Llama layer: GQA attention over the cache equals repeating
    # the KV heads; the decode step writes the new token into the cache slot it attends to.
    s = decoder_e2e.TINY
    torch.manual_seed(0)
    layer = decoder_e2e.DecoderLayer(s, decoder_e2e.dense_linears(s, "cpu", torch.float32), "cpu", torch.float32)
    B, L = 2, 8
    kc, vc = torch.randn(B, s.kv_heads, L, s.head_dim), torch.randn(B, s.kv_heads, L, s.head_dim)
    x = torch.randn(B, 1, s.hidden)
    cos, sin = decoder_e2e.rope_tables(torch.tensor([L - 1]), s.head_dim, torch.float32)
    with torch.no_grad():
        y = layer(x, cos, sin, kc, vc, torch.tensor([L - 1]))
        h = torch.nn.functional.rms_norm(x, (s.hidden,), layer.ln1, 1e-5)
        k = decoder_e2e.rope(layer.k_proj(h).view(B, 1, s.kv_heads, s.head_dim).transpose(1, 2), cos, sin)
        assert torch.allclose(kc[:, :, -1:], k)
        q = decoder_e2e.rope(layer.q_proj(h).view(B, 1, s.heads, s.head_dim).transpose(1, 2), cos, sin)
        rep = s.heads // s.kv_heads
        att = torch.softmax(q @ kc.repeat_interleave(rep, 1).transpose(-1, -2) / s.head_dim ** 0.5, -1)
        a = (att @ vc.repeat_interleave(rep, 1)).transpose(1, 2).reshape(B, 1, -1)
        x2 = x + layer.o_proj(a)
        h2 = torch.nn.functional.rms_norm(x2, (s.hidden,), layer.ln2, 1e-5)
        want = x2 + layer.down_proj(torch.nn.functional.silu(layer.gate_proj(h2)) * layer.up_proj(h2))
    assert torch.allclose(y, want, atol=1e-5, rtol=1e-4)


def test_peers_report_why_without_a_gpu(monkeypatch):
    v = peers.versions()
    assert set(v) == {"torchao", "gemlite"}
    monkeypatch.setenv("SFMP_NO_PEERS", "1")
    assert peers.gpu_peers(64, 128, 1, "cpu") == []


def test_synthetic_layers_match_pack():
    synthetic.self_check()
    p = synthetic.layer(600, 300, 3.0)
    assert synthetic.widths_of(p) == (2, 3)


@pytest.mark.parametrize("bpw", [2.5, 3.0, 4.0])
def test_synthetic_bit_map_hits_the_budget(bpw):
    g = torch.Generator().manual_seed(0)
    bits = synthetic.bit_map(8, 16, bpw, 128, g)
    assert abs(bits.float().mean().item() + 0.25 - bpw) < 1e-9
