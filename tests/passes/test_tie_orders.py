import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from sfmp_compile.passes.find_linears import find_linear_sites
from sfmp_compile.passes.fx_utils import get_constant
from sfmp_compile.passes.tie_orders import tie_groups


class _Block(nn.Module):
    """q/k/v read one activation; gate and up meet under SiLU(gate)·up; down consumes that region."""

    def __init__(self, d=64, h=96):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, 32), nn.Linear(d, 32)
        self.gate, self.up, self.down = nn.Linear(d, h), nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        a = self.q(x)[..., :32] + self.k(x) * self.v(x)
        y = x + torch.cat([a, a], -1)
        return self.down(torch.nn.functional.silu(self.gate(y)) * self.up(y))


def test_tie_groups_find_shared_inputs_and_elementwise_regions():
    m, x = _Block(), torch.randn(2, 5, 64)
    gm = fx.symbolic_trace(m)
    ShapeProp(gm).propagate(x)
    rows, cols = tie_groups(find_linear_sites(gm), lambda n: get_constant(gm, n) if n.op == "get_attr" else None)
    assert sorted(sorted(g) for g in rows) == [["gate", "up"]]
    assert sorted(sorted(g) for g in cols) == [["gate", "up"], ["k", "q", "v"]]
