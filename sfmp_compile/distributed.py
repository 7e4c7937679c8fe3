"""Calibration across processes with torch.distributed (``torchrun --nproc-per-node N sfmp quantize``).

Calibration items are dealt out round-robin (item b to rank b mod N); what is summed over them (E[x²]
moments, GPTQ Hessians) is summed in ONE fixed order, the global item order 0, 1, 2, ..., whatever N is.

Why not a plain all-reduce: fp32 addition is not associative, and an all-reduce adds per-rank
partial sums in an order that depends on N and on the backend's algorithm (ring, tree), so N
processes would give different bits from one, and the allocation, which ranks blocks by these sums,
could then flip a block's width. Accumulating in fp64 and rounding once narrows that but does not
remove it. Instead items are processed in rounds (round j: rank r runs item j·N + r), and at the end
of each round every item's contribution is broadcast by its owner and added by every rank in item
order, exactly the sequence of fp32 additions one process makes. The cost is N broadcasts of each
contribution per round instead of one all-reduce per layer (for a Hessian, K² floats per item
instead of per rank): cheap for the moments, and for Hessians bounded by using few, long
calibration items. Everything else (planning, allocation) is repeated on every rank from identical
inputs, so every rank holds the same plan without sending it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class Ranks:
    """This process's place: rank, world size, and the device collectives run on (CPU for gloo,
    this rank's GPU for nccl). world == 1: no torch.distributed at all."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def share(self, items: list) -> list:
        """This rank's calibration items (round-robin: item b goes to rank b mod world)."""
        return items[self.rank::self.world]

    def rounds(self, n_items: int) -> int:
        return -(-n_items // self.world)

    def owner(self, i: int) -> int:
        """The rank that does job i of a list shared out across ranks (quantizing layer i of a block)."""
        return i % self.world

    def broadcast_object(self, obj, src: int):
        """``obj`` from rank ``src`` on every rank (pickled by torch.distributed; ranks are one job)."""
        if self.world == 1:
            return obj
        import torch.distributed as dist
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()


def from_env() -> Ranks:
    """The process group already initialised, else the one torchrun's environment describes
    (WORLD_SIZE > 1: init_process_group with nccl when CUDA is available, else gloo), else one
    process (Ranks())."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return Ranks()
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_world_size() == 1:
        return Ranks()
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank() % torch.cuda.device_count())))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


class OrderedSums:
    """Σ over calibration items of per-item contributions, per name, added in global item order.

    shapes: name -> shape of one contribution (fp32). ``record(name, value, count)`` is called by
    a hook once per name per item (value fp32 of that shape, count: tokens); ``end_round(j)`` after
    round j adds the round's items, in item order, on every rank. ``result(finish)`` -> name ->
    finish(sum, total count). With one process, record adds at once: the additions are then exactly
    the in-memory path's (salience.input_second_moments, quantizers.gptq._HessianAccumulator).
    """

    def __init__(self, ranks: Ranks, n_items: int, shapes: dict[str, tuple[int, ...]]):
        self.ranks, self.n_items, self.shapes = ranks, n_items, dict(shapes)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.pending: dict[str, tuple[torch.Tensor, int]] = {}

    def _add(self, name: str, value: torch.Tensor, count: int) -> None:
        # In place (the same bits as ``+``): no second K × K Hessian while one item's share is added.
        if name in self.sums:
            self.sums[name].add_(value)
        else:
            self.sums[name] = value
        self.counts[name] = self.counts.get(name, 0) + count

    def record(self, name: str, value: torch.Tensor, count: int) -> None:
        if self.ranks.world == 1:
            self._add(name, value, count)
            return
        if name in self.pending:
            raise ValueError(f"{name} ran twice for one calibration item; distributed calibration needs each "
                             "layer called once per forward")
        self.pending[name] = (value, count)

    def end_round(self, j: int) -> None:
        """Add round j's contributions (items j·world ... j·world + world - 1) in item order."""
        if self.ranks.world == 1:
            return
        import torch.distributed as dist
        dev = self.ranks.device
        for src in range(self.ranks.world):
            if j * self.ranks.world + src >= self.n_items:
                break
            for name, shape in self.shapes.items():
                if src == self.ranks.rank:
                    if name not in self.pending:
                        raise ValueError(f"calibration never reached layer {name} on rank {src}")
                    value, count = self.pending[name]
                    value, cnt = value.to(dev, torch.float32).contiguous(), torch.tensor([count], device=dev)
                else:
                    value, cnt = torch.empty(shape, dtype=torch.float32, device=dev), torch.zeros(1, dtype=torch.int64, device=dev)
                dist.broadcast(value, src=src)
                dist.broadcast(cnt, src=src)
                self._add(name, value.cpu(), int(cnt))
        self.pending.clear()

    def result(self, finish: Callable[[torch.Tensor, int], torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self.shapes if n not in self.sums]
        if missing:
            raise ValueError(f"calibration never reached these layers: {missing[:5]}")
        return {n: finish(self.sums[n], self.counts[n]) for n in self.shapes}
