"""The compile backend on the CPU kernels: layers prepared for a CPU layout keep their op, each
``cpu_kernel`` stays within its accuracy of the exact reference compile, and the resident bytes the
memory goals count (test_backend.py's helpers and its fresh-Dynamo fixture)."""
import pytest
import torch

import sfmp_compile
from sfmp_compile import SFMPConfigError, quantize
from sfmp_compile.backend import sfmp_backend
from sfmp_compile.eval.models import tiny_llama

from .passes._helpers import SMALL
from .test_backend import _backend, _fresh_dynamo, _ids  # noqa: F401  (the fixture is autouse)


def test_cpu_layout_layers_keep_their_op_and_their_permutations_fold():
    """A model loaded and prepared for the int4 CPU kernel (layers in the int4 layout) compiles without
    re-quantizing: each layer keeps its int4 op, and its permutations become graph gathers that
    the folding pass can cancel, exactly as for packed layers."""
    m = quantize(tiny_llama(), bits=3.5, salience="weight", **SMALL)
    for mod in m.modules():
        if isinstance(mod, sfmp_compile.SFMPLinear):
            mod.prepare_for("cpu", "int4")
    be = sfmp_backend(inner="aot_eager", cpu_kernel="reference", skip_bits={})
    with torch.no_grad():
        eager = m(_ids()).logits
        out = torch.compile(m, backend=be)(_ids()).logits
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    r = be.reports[0]
    assert be.quantize_calls == 0 and len(r.layers) == 14
    assert all(row.form == "sfmp" and "linear_cpu_int4" in row.op for row in r.layers)
    assert r.gathers_after < r.gathers_before


@pytest.fixture(scope="module")
def reference_3bit():
    """``(backend, logits)``: the tiny Llama compiled at 3.0 bits on the exact reference op, on ``_ids(8)``.

    The CPU-kernel tests below all compare against this same compile (same model, plan and input),
    so it is built once for the module instead of once per test; each test still compiles its own
    model with its own backend. Read-only: no test compiles or calls through this backend again.
    The model is held until the module ends: the backend's cache is keyed by parameter identity
    and drops a layer (and its ``packed_bytes``) once its parameter is freed."""
    torch._dynamo.reset()
    be, model = _backend(bits=3.0), tiny_llama()
    with torch.no_grad():
        logits = torch.compile(model, backend=be)(_ids(8)).logits
    torch._dynamo.reset()
    yield be, logits
    del model


@pytest.mark.parametrize("kernel,op,floor_db", [("packed", "linear_cpu.v2", 30), ("precise", "linear_cpu.v2", 60),
                                                ("int4", "linear_cpu_int4", 30)])
def test_cpu_kernels_are_close_to_reference(reference_3bit, kernel, op, floor_db):
    """Every layer runs the chosen CPU kernel, within its activation rounding of the reference compile."""
    from sfmp_compile.eval.metrics import sqnr_db
    _, ref = reference_3bit
    model = tiny_llama()  # deterministic in its seed: the model the reference compiled
    be = _backend(bits=3.0, cpu_kernel=kernel)
    with torch.no_grad():
        out = torch.compile(model, backend=be)(_ids()).logits
    assert sqnr_db(ref, out) > floor_db
    assert {r.op for rep in be.reports for r in rep.layers} == {op}
    assert kernel == "int4" or be.resident_bytes == be.packed_bytes  # true-bit resident: nothing widened


def test_cpu_int4_backend_holds_one_shared_int4_copy_of_each_weight(reference_3bit):
    """The int4 CPU path keeps only the int4 form: every graph (including recompiles for a new
    length) takes its constants from the backend's cache, the true-bit form is rebuilt exactly on
    demand, and the resident bytes are at most 1/6 of the fp32 linears."""
    graphs = []

    def inner(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = tiny_llama()
    twin_be, _ = reference_3bit  # same model and plan, true-bit form kept: the reference for packed_weights()
    be = _backend(bits=3.0, cpu_kernel="int4", inner=inner)
    cm = torch.compile(model, backend=be, dynamic=False)
    with torch.no_grad():
        cm(_ids(8))
        cm(_ids(12, seed=1))  # static shapes: a second graph, from the cache
    assert len(graphs) == 2 and be.quantize_calls == 14
    cached = {e.layer.data["w4"].data_ptr() for e in be._cache.values()}
    for gm in graphs:
        w4 = {b.data_ptr() for n, b in gm.named_buffers() if n.endswith("w4")}
        assert w4 == cached  # the same tensors, not per-graph copies
    assert be.resident_bytes == sum(e.layer.nbytes for e in be._cache.values())  # int4 form only
    assert be.packed_bytes == twin_be.packed_bytes
    want = twin_be.packed_weights()
    for name, p in be.packed_weights().items():
        for k, t in p.tensors().items():
            assert torch.equal(t, want[name].tensors()[k]), (name, k)


def test_cpu_resident_weights_are_at_most_a_sixth_of_fp32():
    """The CPU memory goal at the default config (group 128) on layers of a realistic aspect."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1536), torch.nn.SiLU(), torch.nn.Linear(1536, 512))
    be = sfmp_backend(bits=3.0, inner="aot_eager", release_weights=True)
    with torch.no_grad():
        torch.compile(model, backend=be)(torch.randn(2, 512))
    fp32 = 4 * 2 * 512 * 1536
    assert be.released_bytes == fp32
    assert be.resident_bytes <= fp32 / 6, (be.resident_bytes, fp32)


def test_cpu_kernel_option_is_validated():
    with pytest.raises(SFMPConfigError, match="cpu_kernel"):
        sfmp_backend(cpu_kernel="fast")

