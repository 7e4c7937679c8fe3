"""Builders shared by the tests: random packed weights that exercise ragged edges and bit mixes."""
import torch

from sfmp_compile.blocks import BlockGrid
from sfmp_compile.format import PackedWeight, pack


def random_codes(grid: BlockGrid, bits: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [N, K] codes, each uniformly random below 2**bits of its block."""
    lim = grid.expand_rows(bits.to(torch.int64)).repeat_interleave(grid.group_size, 1)[:, : grid.in_features]
    u = torch.rand(grid.out_features, grid.in_features, generator=gen)
    return (u * (2.0 ** lim)).floor().clamp_max(2.0 ** lim - 1).to(torch.uint8)


def random_packed(N, K, block_rows, group_size, widths=(2, 3, 4), permute=True, seed=0, with_codes=False):
    """A PackedWeight with random block widths from ``widths`` (each appears at least once, so a
    kernel for the set is really exercised), uniformly random codes, fp16-exact scales and integer
    zeros; with ``with_codes`` also the uint8 [N, K] codes it packed (reordered coordinates)."""
    g = torch.Generator().manual_seed(seed)
    grid = BlockGrid(N, K, block_rows, group_size)
    R, G = grid.shape
    choices = torch.tensor(widths, dtype=torch.int64)
    bits = choices[torch.randint(0, len(widths), (R, G), generator=g)]
    flat = bits.view(-1)
    for i, b in enumerate(widths[: flat.numel()]):
        flat[i] = b
    codes = random_codes(grid, bits, g)
    scales = (torch.rand(N, G, generator=g) * 0.05 + 1e-3).half().float()
    zeros = torch.floor(torch.rand(N, G, generator=g) * 2.0 ** grid.expand_rows(bits).float())
    rp = torch.randperm(N, generator=g) if permute else None
    cp = torch.randperm(K, generator=g) if permute else None
    p: PackedWeight = pack(codes, bits, scales, zeros, rp, cp, block_rows, group_size)
    return (p, codes) if with_codes else p


def edit_code(c: torch.Tensor, edit: str, pos: int, val: int) -> torch.Tensor | None:
    """A uint8 permutation code (permcodec) with one byte-level edit: "flip" xors byte ``pos`` with
    ``val``, "tag" overwrites the tag byte, "truncate" drops the last byte, "extend" appends ``val``.
    None for an edit this helper does not make (the caller's own cases), or one an empty code can't take."""
    c = c.clone()
    if edit == "flip" and c.numel():
        c[pos % c.numel()] ^= val
    elif edit == "tag" and c.numel():
        c[0] = val
    elif edit == "truncate" and c.numel():
        c = c[:-1]
    elif edit == "extend":
        c = torch.cat([c, torch.tensor([val % 256], dtype=torch.uint8)])
    else:
        return None
    return c


def saved_tiny(directory) -> tuple:
    """``(model, checkpoint_dir, ids)``: the tiny Llama quantized at 2.75 bits (16-row blocks, group 32,
    calibrated on ``ids``, int64 [2, 16]) and saved under ``directory`` / "model"."""
    from sfmp_compile import quantize, save_quantized
    from sfmp_compile.eval.models import tiny_llama
    torch.manual_seed(0)
    m = tiny_llama()
    x = torch.randint(0, 256, (2, 16))
    quantize(m, bits=2.75, calibration=[x], block_rows=16, group_size=32)
    d = str(directory / "model")
    save_quantized(m, d)
    return m, d, x
