"""fp16 / bf16 models (the tiny Llama cast) through ``quantize`` and through the compile backend on
CPU with the exact reference op."""
import copy

import pytest
import torch

from sfmp_compile import quantize
from sfmp_compile.backend import sfmp_backend
from sfmp_compile.eval.models import tiny_llama
from sfmp_compile.linear import SFMPLinear

from .passes._helpers import SMALL, quantized_twin
from .test_backend import _fresh_dynamo, _ids  # noqa: F401  (the fixture is autouse)


def _backend():
    return sfmp_backend(inner="aot_eager", bits=2.5, cpu_kernel="reference", **SMALL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_quantize(dtype):
    """fp16/bf16 weights and activations: the packed layers are bit for bit those of the same weights
    upcast to fp32 under the same plan, and the logits (in the model's dtype) are within
    half-precision activation error of that fp32 model's."""
    m = tiny_llama().to(dtype)
    up = copy.deepcopy(m).float()
    x = torch.randint(0, 256, (2, 16))
    quantize(m, bits=3.0, calibration=[x], block_rows=16, group_size=32)
    q32 = quantize(up, plan=m.sfmp_plan)
    for n in m.sfmp_plan.layers:
        a, b = m.get_submodule(n).packed.tensors(), q32.get_submodule(n).packed.tensors()
        assert all(torch.equal(a[k], b[k]) for k in a), n
    for layer in [*m.modules(), *q32.modules()]:
        if isinstance(layer, SFMPLinear):
            layer.prepare_for("cpu", "reference")  # dtype effects only, not the int8-activation kernel
    held = torch.randint(0, 256, (1, 24))
    with torch.no_grad():
        got, want = m(held).logits, q32(held).logits
    assert got.dtype == dtype
    rel = float((got.float() - want).norm() / want.norm())
    assert rel < (0.002 if dtype == torch.float16 else 0.015), rel  # measured 5.4e-4 (fp16), 4.5e-3 (bf16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_compiles_on_the_reference_path(dtype):
    m = tiny_llama().to(dtype)
    orig = copy.deepcopy(m)
    be = _backend()
    with torch.no_grad():
        out = torch.compile(m, backend=be, fullgraph=True)(_ids()).logits
        eager = quantized_twin(orig, be.plan)(_ids()).logits  # eager SFMPLinear: the same reference op
    assert out.dtype == dtype and be.quantize_calls == 14
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
