"""Shared builders for the compile-backend tests: captured Dynamo graphs, small models, eager twins."""
from __future__ import annotations

import copy

import torch
from torch import nn

from sfmp_compile.quantize import quantize, quantize_weight

SMALL = dict(block_rows=32, group_size=32, skip_bits={})  # several blocks per layer; lm_head kept float


def capture(model_or_fn, *args, **kwargs):
    """(GraphModule, example_inputs) of the single graph Dynamo produces for ``model_or_fn(*args)``."""
    graphs = []

    def grab(gm, example_inputs):
        graphs.append((gm, list(example_inputs)))
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model_or_fn, backend=grab, fullgraph=True)(*args, **kwargs)
    torch._dynamo.reset()
    assert len(graphs) == 1
    return graphs[0]


def dequantized_twin(model: nn.Module, plan) -> nn.Module:
    """A float copy of ``model`` whose planned linears hold their dequantized weights Ŵ.

    The exact eager counterpart of a compiled graph: same Ŵ, plain F.linear / addmm, no kernel
    differences (the eager SFMPLinear may take codegen's bf16 int4 CPU path).
    """
    twin = copy.deepcopy(model)
    for name, lp in plan.layers.items():
        mod = twin.get_submodule(name)
        conv1d = type(mod).__name__ == "Conv1D"
        w = mod.weight.detach().t() if conv1d else mod.weight.detach()
        deq = quantize_weight(w, lp, plan.config).dequantize()
        with torch.no_grad():
            mod.weight.copy_(deq.t() if conv1d else deq)
    return twin


def quantized_twin(model: nn.Module, plan, cpu_kernel: str = "reference") -> nn.Module:
    """``quantize(copy_of_model, plan=plan)``: the eager SFMPLinear model with the same quantized weights,
    its CPU layers on ``cpu_kernel`` (default: the exact reference op)."""
    from sfmp_compile.linear import SFMPLinear
    q = quantize(copy.deepcopy(model), plan=plan)
    for m in q.modules():
        if isinstance(m, SFMPLinear):
            m.prepare_for("cpu", cpu_kernel)
    return q


def dequantized_from(model: nn.Module, qtwin: nn.Module, names) -> nn.Module:
    """``dequantized_twin`` built from an already quantized twin (``quantized_twin(model, plan)``):
    a float copy of ``model`` whose layers ``names`` hold Ŵ of ``qtwin``'s SFMPLinear layers, without
    quantizing every layer a second time (the cost on large layers). Same Ŵ as
    ``dequantized_twin(model, plan)`` whenever ``quantize(plan=plan)`` is the per-layer
    ``quantize_weight``; a test that compares a compile with both twins checks that too."""
    twin = copy.deepcopy(model)
    for name in names:
        mod = twin.get_submodule(name)
        deq = qtwin.get_submodule(name).packed.dequantize()
        with torch.no_grad():
            mod.weight.copy_(deq.t() if type(mod).__name__ == "Conv1D" else deq)
    return twin


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    """max |a - b| <= rel * max |b| (logits of random tiny models are O(1) and vary in scale)."""
    err = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} x {scale:.3g}"


class BiasMLP(nn.Module):
    """Linear layers with biases, GELU between them, a residual: the region folding must permute biases."""

    def __init__(self, d=64, h=96):
        super().__init__()
        self.up = nn.Linear(d, h)
        self.gate = nn.Linear(d, h)
        self.down = nn.Linear(h, d)
        self.out = nn.Linear(d, 16)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.gate(x)) * self.up(x)
        x = x + self.down(h)
        return self.out(x)


class BrokenModel(nn.Module):
    """Two blocks with a forced graph break between them (at the top frame: names stay exact)."""

    def __init__(self, d=64, h=128):
        super().__init__()
        self.a_up = nn.Linear(d, h, bias=False)
        self.a_down = nn.Linear(h, d, bias=False)
        self.b_up = nn.Linear(d, h, bias=False)
        self.b_down = nn.Linear(h, d, bias=False)
        with torch.no_grad():  # make the halves differ in salience so a global budget is not uniform
            self.b_up.weight.mul_(3.0)
            self.b_down.weight.mul_(3.0)

    def forward(self, x):
        x = x + self.a_down(torch.relu(self.a_up(x)))
        torch._dynamo.graph_break()
        return x + self.b_down(torch.relu(self.b_up(x)))


class Block(nn.Module):
    def __init__(self, d=64, h=128):
        super().__init__()
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, d)

    def forward(self, x):
        h = torch.relu(self.up(x))
        torch._dynamo.graph_break()
        return x + self.down(h)


class LoopBreakModel(nn.Module):
    """A graph break inside a submodule called in a loop: Dynamo skips the outer frame and compiles
    Block.forward once, reusing that graph for every Block instance (parameters are inputs)."""

    def __init__(self, n=2, d=64, h=128):
        super().__init__()
        self.blocks = nn.ModuleList([Block(d, h) for _ in range(n)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class ComputedWeight(nn.Module):
    """F.linear with a weight computed in the graph (not a parameter): must be skipped and listed."""

    def __init__(self, d=64):
        super().__init__()
        self.base = nn.Parameter(torch.randn(d, d) * 0.1)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        w = self.base * 2.0
        return self.proj(torch.nn.functional.linear(x, w))
