"""The backend at the default 512 x 128 blocks on SmolLM2-shaped layers (576 / 192 / 1536: ragged
row-blocks and groups): compiled equals eager on the exact op."""
import copy

import torch

from sfmp_compile import sfmp_backend
from sfmp_compile.eval.models import tiny_llama

from .passes._helpers import dequantized_from, quantized_twin


def test_default_blocks_on_real_shapes_compiled_equals_eager():
    torch._dynamo.reset()
    m = tiny_llama(hidden=576, layers=1, heads=9, kv_heads=3, intermediate=1536)
    orig = copy.deepcopy(m)
    be = sfmp_backend(bits=2.75, salience="weight", inner="aot_eager", cpu_kernel="reference", skip_bits={})
    assert (be.config.block_rows, be.config.group_size) == (512, 128)
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = torch.compile(m, backend=be, fullgraph=True)(ids).logits
        # Both twins from one independent quantize(plan=be.plan) (these layers are the costly part):
        # the eager reference op, and plain float GEMMs on its dequantized weights.
        qtwin = quantized_twin(orig, be.plan)
        torch.testing.assert_close(out, qtwin(ids).logits, rtol=1e-5, atol=1e-5)
        twin = dequantized_from(orig, qtwin, be.plan.layers)
        torch.testing.assert_close(out, twin(ids).logits, rtol=1e-5, atol=1e-5)
    assert abs(be.plan.average_bits() - 2.75) < 0.02
    assert {tuple(lp.bits.shape) for lp in be.plan.layers.values()} == {(2, 5), (1, 5), (3, 5), (2, 12)}
