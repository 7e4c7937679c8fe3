"""One compiled graph per parameter set: the callable the compile backend hands back to Dynamo."""
from __future__ import annotations

import weakref
from typing import Callable

import torch.fx as fx

from .passes.fx_utils import copy_graph_module, is_state_input


class GraphVariants:
    """The compiled graph, per parameter set.

    Dynamo passes parameters to a graph as inputs and guards them on metadata only, so it reuses
    one graph for every instance of the same module code (e.g. each decoder layer's forward after a
    graph break inside it). Our graph has that instance's packed weights and permutations baked in,
    so a call with *other* parameter objects gets its own compilation (cached by their identity),
    by ``compile_graph(gm, example_inputs, variant_of=index)``. Checking identities costs one pass
    over the parameter inputs per call.
    """

    def __init__(self, compile_graph: Callable, pristine: fx.GraphModule, example_inputs: list,
                 compiled: Callable, index: int):
        self.compile_graph = compile_graph
        self.pristine = pristine
        self.example_inputs = example_inputs
        self.index = index
        phs = [n for n in pristine.graph.nodes if n.op == "placeholder"]
        self.positions = [i for i, (n, e) in enumerate(zip(phs, example_inputs)) if is_state_input(n, e)]
        self.variants: dict[tuple, tuple[list, Callable]] = {}
        self._add([example_inputs[i] for i in self.positions], compiled)

    def _add(self, tensors: list, compiled: Callable) -> None:
        key = tuple(id(t) for t in tensors)
        self.variants[key] = ([weakref.ref(t) for t in tensors], compiled)

    def __call__(self, *args):
        state = [args[i] for i in self.positions]
        hit = self.variants.get(tuple(id(t) for t in state))
        if hit is None or any(r() is not t for r, t in zip(hit[0], state)):
            inputs = list(self.example_inputs)
            for i in self.positions:
                inputs[i] = args[i]
            compiled = self.compile_graph(copy_graph_module(self.pristine), inputs, variant_of=self.index)
            self._add(state, compiled)
            hit = self.variants[tuple(id(t) for t in state)]
        return hit[1](*args)  # Dynamo's convention for a backend's result: unboxed positional args
