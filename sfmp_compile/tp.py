"""Tensor-parallel shards: which axis of a layer a server splits, and what that asks of SFMP's orders.

A tensor-parallel server (Megatron-style, as vLLM and SGLang do it) splits every transformer linear
across S ranks in one of two ways:

  column-parallel  q/k/v, gate/up (and GPT-2's c_attn / c_fc): the OUTPUT rows are split, rank k
                   holds rows [k·N/S, (k+1)·N/S) and reads the whole (replicated) input.
  row-parallel     o_proj, down_proj (GPT-2's c_proj, ...): the INPUT columns are split, rank k holds
                   columns [k·K/S, (k+1)·K/S), computes partial sums of every output, all-reduce adds them.

With ``QuantConfig.tp_shards = S > 1`` a plan's permutation on the split axis must map each shard
onto itself (a row of rank 0 may not be stored on rank 1), so SFMP ranks by salience *inside*
each shard; the other axis stays free. And each rank's slice must be a block grid of its own:
shard boundaries must fall on row-block (group) boundaries, or a whole shard must lie inside one
row-block (group). docs/SCALE.md explains the serving side. Names are matched on their last
component (``ROW_PARALLEL``); every other quantized linear is column-parallel.
"""
from __future__ import annotations

import fnmatch

import torch

from .blocks import BlockGrid
from .config import SFMPConfigError

# Layers whose input columns a tensor-parallel server splits (fnmatch on the name's last component).
ROW_PARALLEL = ("o_proj", "down_proj", "out_proj", "c_proj", "fc2", "dense_4h_to_h", "wo", "w2")


def split_axis(name: str) -> int:
    """The axis tensor parallelism splits for a layer: 1 (input columns) for a row-parallel layer
    (``ROW_PARALLEL``), else 0 (output rows, column-parallel)."""
    leaf = name.rsplit(".", 1)[-1]
    return 1 if any(fnmatch.fnmatchcase(leaf, p) for p in ROW_PARALLEL) else 0


def axis_shards(name: str, tp_shards: int) -> tuple[int, int]:
    """(row shards, column shards) of a layer: ``tp_shards`` on its split axis, 1 on the other."""
    return (tp_shards, 1) if split_axis(name) == 0 else (1, tp_shards)


def check_heads(config: object, shards: int) -> None:
    """Raise SFMPConfigError unless a model with this (transformers-style) config splits its attention
    heads ``shards`` ways as a TP server does: query heads divisible by ``shards``, and KV heads
    either divisible by it or dividing it (then replicated). A config without head counts passes."""
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    if shards == 1 or not isinstance(heads, int) or not isinstance(kv, int):
        return
    if heads % shards or (kv % shards and shards % kv):
        raise SFMPConfigError(f"tp_shards={shards}: the model has {heads} attention heads and {kv} KV heads, which "
                              f"{shards} tensor-parallel ranks cannot share (query heads must divide evenly; KV heads "
                              f"must divide evenly or be replicated)")


def slot_sizes(grid: BlockGrid, axis: int) -> list[int]:
    """Sizes of the row-blocks (axis 0) or column groups (axis 1) of ``grid``, in order."""
    if axis == 0:
        return [grid.rows_in(r) for r in range(grid.n_row_blocks)]
    return [grid.cols_in(j) for j in range(grid.n_groups)]


def _bounds(sizes: list[int]) -> list[int]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out


def check_split(name: str, grid: BlockGrid, axis: int, shards: int) -> None:
    """Raise SFMPConfigError unless axis ``axis`` of ``grid`` splits into ``shards`` equal slices
    each of which is a block grid of its own: a union of whole row-blocks (groups) or a part of one."""
    if shards == 1:
        return
    n = grid.out_features if axis == 0 else grid.in_features
    what, unit = ("rows", "block_rows") if axis == 0 else ("input columns", "group_size")
    size = grid.block_rows if axis == 0 else grid.group_size
    style = "column-parallel: its output rows" if axis == 0 else "row-parallel: its input columns"
    if n % shards:
        raise SFMPConfigError(f"tp_shards={shards}: {name} ({style} are split) has {n} {what}, "
                              f"which do not split into {shards} equal shards")
    per = n // shards
    slots = _bounds(slot_sizes(grid, axis))
    inner = set(slots)
    for k in range(shards):
        a, b = k * per, (k + 1) * per
        whole = a in inner and b in inner
        inside = a // size == (b - 1) // size
        if not (whole or inside):
            raise SFMPConfigError(
                f"tp_shards={shards}: {name} ({style} are split) has shards of {per} {what}, but {unit}={size}: "
                f"shard {k} ({what} {a}..{b - 1}) neither covers whole blocks nor lies inside one; "
                f"choose a {unit} that divides {per}, or a multiple of {per}, so each rank's slice is whole blocks or part of one")


def maps_shards(order: torch.Tensor, shards: int) -> bool:
    """Whether the permutation ``order`` (int64 [n]) maps each of ``shards`` equal slices onto itself."""
    n = order.numel()
    if n % shards:
        return False
    per = n // shards
    return bool(torch.equal(order.cpu() // per, torch.arange(n) // per))


def rank_bytes(bits: torch.Tensor, grid: BlockGrid, axis: int, shards: int) -> list[int]:
    """Bytes of codes + fp16 scales and zeros that each of ``shards`` ranks holds of one layer.

    bits: uint8 [R, G] the layer's bit map (reordered coordinates); axis: the split axis (0 rows,
    1 columns). Codes are counted as stored (a ragged or partial group padded to 32-column words),
    a (row, group) pair a rank touches costs it one scale and one zero. Permutation codes and bit
    maps (a few bytes per row) are left out. Returns one int per rank; [total] for shards=1.
    """
    b = bits.to(torch.int64).cpu()
    n = grid.out_features if axis == 0 else grid.in_features
    per = n // shards
    out = []
    for k in range(shards):
        lo, hi = k * per, (k + 1) * per
        code_bits, pairs = 0, 0
        if axis == 0:
            for r in range(grid.n_row_blocks):
                r0 = r * grid.block_rows
                rows = max(0, min(hi, r0 + grid.rows_in(r)) - max(lo, r0))
                code_bits += rows * sum(int(b[r, j]) * grid.stored_cols(j) for j in range(grid.n_groups))
                pairs += rows * grid.n_groups
        else:
            for j in range(grid.n_groups):
                c0 = j * grid.group_size
                cols = max(0, min(hi, c0 + grid.cols_in(j)) - max(lo, c0))
                if cols:
                    stored = -(-cols // 32) * 32
                    code_bits += sum(int(b[r, j]) * grid.rows_in(r) * stored for r in range(grid.n_row_blocks))
                    pairs += grid.out_features
        out.append(code_bits // 8 + 4 * pairs)
    return out
