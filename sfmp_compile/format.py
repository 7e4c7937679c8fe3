"""The packed SFMP weight format. See docs/FORMAT.md for the byte-level description.

``PackedWeight`` is the in-memory form, the same tensors in format v1 and v2 (int32 permutations,
what kernels gather through); the versions differ only in how a checkpoint stores the permutations
(v2: ``permcodec``, a few bits per row and column instead of 32).

A b-bit block is stored at exactly b bits per weight, as power-of-two *sub-planes* (b = 3 -> a
2-bit plane + a 1-bit plane; 7 -> 4+2+1). Each sub-plane of width w packs 32/w consecutive input
columns per int32 word, and is laid out [words_per_row, rows] so a tile of output rows loads
contiguous words. Within a row-block, blocks are stored grouped by bit width (ascending), so a
kernel walks one segment per width with the width as a compile-time constant.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .blocks import BlockGrid

FORMAT_VERSION = 2  # what this build writes
READ_VERSIONS = (1, 2)  # what it reads
_PLANE_WIDTHS = (8, 4, 2, 1)


def plane_widths(bits: int) -> tuple[int, ...]:
    """Sub-plane widths of a b-bit code, widest first; the first plane holds the lowest bits."""
    return tuple(w for w in _PLANE_WIDTHS if bits & w)


def _pack_run(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a run of same-width blocks. codes: uint8 [rows, nblk, cols] (cols % 32 == 0).

    Returns int32 [nblk, words_per_block]: per block, its sub-planes one after another, each
    [cols*w/32, rows] row-contiguous.
    """
    rows, nblk, cols = codes.shape
    planes, shift = [], 0
    for w in plane_widths(bits):
        per, S = 32 // w, 8 // w
        # byte b of a word holds columns b*S .. b*S + S-1: OR uint8 bytes, then four bytes into a
        # word, so no int64 copy of the codes is made
        v = ((codes >> shift) & ((1 << w) - 1)).view(rows, nblk, cols // S, S)
        byte = v[..., 0].clone()
        for i in range(1, S):
            byte |= v[..., i] << (i * w)
        b = byte.view(rows, nblk, cols // per, 4).to(torch.int32)
        words = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)  # wraps into the sign bit
        planes.append(words.permute(1, 2, 0))  # [nblk, cols/per, rows]
        shift += w
    return torch.cat(planes, dim=1).reshape(nblk, -1)


def _unpack_run(words: torch.Tensor, bits: int, rows: int, cols: int) -> torch.Tensor:
    """Inverse of _pack_run. words: int32 [nblk, words_per_block] -> uint8 [rows, nblk, cols]."""
    nblk = words.shape[0]
    w64 = words.to(torch.int64).view(nblk, -1, rows)  # [nblk, total_word_rows, rows]
    out = torch.zeros(rows, nblk, cols, dtype=torch.int64, device=words.device)
    start, shift = 0, 0
    for w in plane_widths(bits):
        per = 32 // w
        n = cols // per
        plane = w64[:, start : start + n, :].permute(2, 0, 1)  # [rows, nblk, n]
        offs = torch.arange(per, dtype=torch.int64, device=words.device) * w
        v = (plane[..., None] >> offs) & ((1 << w) - 1)  # arithmetic shift is fine under the mask
        out |= v.reshape(rows, nblk, cols) << shift
        start += n
        shift += w
    return out.to(torch.uint8)


@dataclass
class PackedWeight:
    """One quantized linear layer, all tensors, no float weight.

    Shapes (R row-blocks, G groups, N out_features, K in_features):
      qweight      int32 [total_words]   all blocks' sub-planes, row-block major, width-sorted inside
      bits         uint8 [R, G]          bit width of block (r, j); j indexes reordered groups
      block_offset int32 [R, G]          word offset of block (r, j) in qweight
      group_order  int32 [R, G]          per row-block, group indices sorted by (bits, j)
      segment_ptr  int32 [R, 10]         groups of width b are group_order[r, ptr[r,b]:ptr[r,b+1]]
      scales       fp16  [G, N]          per (group, reordered row); w = scale * (q - zero)
      zeros        fp16  [G, N]          integer-valued zero points in code units
      row_perm     int32 [N] or [0]      reordered row i is original row row_perm[i]; [0] = identity
      col_perm     int32 [K] or [0]      reordered column j is original column col_perm[j]
    """

    qweight: torch.Tensor
    bits: torch.Tensor
    block_offset: torch.Tensor
    group_order: torch.Tensor
    segment_ptr: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    row_perm: torch.Tensor
    col_perm: torch.Tensor
    out_features: int
    in_features: int
    block_rows: int
    group_size: int
    version: int = FORMAT_VERSION

    TENSOR_FIELDS = ("qweight", "bits", "block_offset", "group_order", "segment_ptr", "scales", "zeros", "row_perm", "col_perm")
    META_FIELDS = ("out_features", "in_features", "block_rows", "group_size", "version")

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.out_features, self.in_features, self.block_rows, self.group_size)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f: getattr(self, f) for f in self.TENSOR_FIELDS}

    def meta(self) -> dict[str, int]:
        return {f: int(getattr(self, f)) for f in self.META_FIELDS}

    def to(self, device) -> "PackedWeight":
        return PackedWeight(**{k: v.to(device) for k, v in self.tensors().items()}, **self.meta())

    @property
    def nbytes(self) -> int:
        """Bytes of these tensors (format v1's stored size, the resident size): codes, bit map,
        offsets, walk order, scales, zeros, int32 permutations. A v2 checkpoint stores the
        permutations smaller: ``permcodec.stored_breakdown``."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def code_bits(self) -> int:
        """Total code bits over real weights (padding excluded)."""
        return int((self.bits.to(torch.int64) * self.grid.weight_counts()).sum())

    @property
    def n_weights(self) -> int:
        return self.out_features * self.in_features

    def codes(self) -> torch.Tensor:
        """Unpack to uint8 codes [N, K] in reordered coordinates."""
        return unpack_codes(self)

    def dequantize_reordered(self, dtype=torch.float32) -> torch.Tensor:
        """W' = scale * (q - zero), [N, K] in reordered coordinates."""
        q = self.codes().to(torch.float32)
        g = self.group_size
        s = self.scales.float().t().repeat_interleave(g, dim=1)[:, : self.in_features]
        z = self.zeros.float().t().repeat_interleave(g, dim=1)[:, : self.in_features]
        return ((q - z) * s).to(dtype)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """The dequantized weight in the ORIGINAL row/column order, [N, K]."""
        w = self.dequantize_reordered(torch.float32)
        out = torch.empty_like(w)
        rows = self.row_perm.long() if self.row_perm.numel() else slice(None)
        cols = self.col_perm.long() if self.col_perm.numel() else slice(None)
        if self.col_perm.numel():
            tmp = torch.empty_like(w)
            tmp[:, cols] = w
            w = tmp
        if self.row_perm.numel():
            out[rows] = w
            w = out
        return w.to(dtype)


def pack(codes: torch.Tensor, bits: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
         row_perm: torch.Tensor | None, col_perm: torch.Tensor | None, block_rows: int, group_size: int) -> PackedWeight:
    """Pack quantized codes into the SFMP format.

    codes: uint8 [N, K] in reordered coordinates, each < 2**bits of its block.
    bits: integer [R, G] in 1..8. scales, zeros: float [N, G] (fp16-representable).
    row_perm / col_perm: int [N] / [K] orders used to reorder (None for identity).
    """
    N, K = codes.shape
    grid = BlockGrid(N, K, block_rows, group_size)
    R, G = grid.shape
    if group_size % 32:
        raise ValueError(f"group_size must be a multiple of 32, got {group_size}")
    if tuple(bits.shape) != (R, G):
        raise ValueError(f"bit map shape {tuple(bits.shape)} does not match the block grid {(R, G)}")
    bits_cpu = bits.to("cpu", torch.int64)
    if bits_cpu.numel() and (bits_cpu.min() < 1 or bits_cpu.max() > 8):
        raise ValueError("block bit widths must lie in 1..8")
    codes = codes.to("cpu", torch.uint8)
    padded = torch.nn.functional.pad(codes, (0, G * group_size - K))
    if (padded.view(N, G, group_size).amax(-1).to(torch.int64) >= (1 << grid.expand_rows(bits_cpu))).any():
        raise ValueError("a code does not fit the bit width of its block")

    order = torch.sort(bits_cpu * G + torch.arange(G), dim=1).indices  # stable by (bits, j)
    seg = torch.zeros(R, 10, dtype=torch.int64)
    for b in range(1, 10):
        seg[:, b] = (bits_cpu < b).sum(dim=1)
    offsets = torch.zeros(R, G, dtype=torch.int64)
    chunks, cursor = [], 0
    full_cols = group_size
    for r in range(R):
        r0, nr = r * block_rows, grid.rows_in(r)
        rows = padded[r0 : r0 + nr].view(nr, G, group_size)
        for b in range(1, 9):
            js = order[r, seg[r, b] : seg[r, b + 1]].tolist()
            if not js:
                continue
            full = [j for j in js if grid.cols_in(j) == full_cols]
            ragged = [j for j in js if grid.cols_in(j) != full_cols]
            for group, cols in ((full, full_cols), (ragged, None)):
                if not group:
                    continue
                cols = cols or grid.stored_cols(group[0])
                run = _pack_run(rows[:, group, :cols], b)
                for i, j in enumerate(group):
                    offsets[r, j] = cursor + i * run.shape[1]
                cursor += run.numel()
                chunks.append(run.reshape(-1))
    qweight = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.int32)
    if cursor >= 2**31:
        raise ValueError("layer too large for int32 word offsets")

    def perm(p, n):
        if p is None:
            return torch.zeros(0, dtype=torch.int32)
        p = p.to("cpu", torch.int64)
        if torch.equal(p, torch.arange(n)):
            return torch.zeros(0, dtype=torch.int32)  # identity: store nothing, gather nothing
        return p.to(torch.int32)

    return PackedWeight(
        qweight=qweight,
        bits=bits_cpu.to(torch.uint8),
        block_offset=offsets.to(torch.int32),
        group_order=order.to(torch.int32),
        segment_ptr=seg.to(torch.int32),
        scales=scales.to("cpu", torch.float16).t().contiguous(),
        zeros=zeros.to("cpu", torch.float16).t().contiguous(),
        row_perm=perm(row_perm, N),
        col_perm=perm(col_perm, K),
        out_features=N, in_features=K, block_rows=block_rows, group_size=group_size,
    )


def unpack_codes(p: PackedWeight) -> torch.Tensor:
    """uint8 codes [N, K] (reordered coordinates) from a PackedWeight."""
    grid = p.grid
    R, G = grid.shape
    gs = p.group_size
    dev = p.qweight.device
    out = torch.zeros(p.out_features, G * gs, dtype=torch.uint8, device=dev)
    order = p.group_order.to("cpu", torch.int64)
    seg = p.segment_ptr.to("cpu", torch.int64)
    offs = p.block_offset.to("cpu", torch.int64)
    for r in range(R):
        r0, nr = r * p.block_rows, grid.rows_in(r)
        for b in range(1, 9):
            js = order[r, seg[r, b] : seg[r, b + 1]].tolist()
            full = [j for j in js if grid.cols_in(j) == gs]
            ragged = [j for j in js if grid.cols_in(j) != gs]
            for group in (full, ragged):
                if not group:
                    continue
                cols = grid.stored_cols(group[0])
                size = nr * cols * b // 32
                start = int(offs[r, group[0]])
                words = p.qweight[start : start + size * len(group)].view(len(group), size)
                codes = _unpack_run(words, b, nr, cols)  # [nr, nblk, cols]
                for i, j in enumerate(group):
                    out[r0 : r0 + nr, j * gs : j * gs + cols] = codes[:, i]
    return out[:, : p.in_features]


def _first_bad(bad: torch.Tensor) -> int:
    """Index of the first True along dim 0 of a [R, ...] mismatch mask (for the error message)."""
    return int(bad.reshape(bad.shape[0], -1).any(dim=1).nonzero()[0, 0])


def expected_tables(grid: BlockGrid, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(group_order, segment_ptr, block_offset), int64 on the CPU, exactly as :func:`pack` writes
    them for this bit map and grid, computed without the codes.

    pack stores row-block after row-block; inside one, width by width ascending, the full-width
    groups then the ragged last group. Only group G-1 can be ragged and it has the largest j, so
    that storage order is group_order itself: a block's offset is the exclusive prefix sum of the
    block sizes (rows_in * stored_cols * b / 32 words) taken in (row-block, group_order) order.
    """
    R, G = grid.shape
    b = bits.to("cpu", torch.int64)
    order = torch.sort(b * G + torch.arange(G), dim=1).indices  # same stable key as pack
    seg = (b[:, None, :] < torch.arange(10)[None, :, None]).sum(dim=2)  # [R, 10]: blocks with bits < b
    rows = torch.tensor([grid.rows_in(r) for r in range(R)], dtype=torch.int64)
    cols = torch.tensor([grid.stored_cols(j) for j in range(G)], dtype=torch.int64)
    size_sorted = torch.gather(rows[:, None] * cols[None, :] * b, 1, order) // 32
    start_sorted = (torch.cumsum(size_sorted.reshape(-1), 0) - size_sorted.reshape(-1)).view(R, G)
    offsets = torch.empty_like(start_sorted).scatter_(1, order, start_sorted)
    return order, seg, offsets


def validate(p: PackedWeight, where: str = "packed weight") -> None:
    """Check every field of a PackedWeight; raise ValueError naming the tensor and what is wrong.

    Beyond version, dtypes and shapes, the tables a kernel dereferences (segment_ptr, group_order,
    block_offset) must equal what :func:`pack` writes for the bit map: a kernel trusts them for
    addressing, so any other value reads outside qweight or silently computes something else.
    Scales must be finite and positive, zeros integers in [0, 2^b - 1] of their block's width b
    (what every quantizer here produces), so a tampered value cannot yield NaN or garbage logits.
    """
    if isinstance(p.version, bool) or p.version not in READ_VERSIONS:
        raise ValueError(f"{where}: format version {p.version!r} is not supported (this build reads versions {list(READ_VERSIONS)})")
    for f in PackedWeight.META_FIELDS:
        v = getattr(p, f)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{where}: {f} must be a positive integer, got {v!r}")
    if p.group_size % 32:
        raise ValueError(f"{where}: group_size must be a multiple of 32, got {p.group_size}")
    for name in PackedWeight.TENSOR_FIELDS:
        if not isinstance(getattr(p, name), torch.Tensor):
            raise ValueError(f"{where}: {name} must be a tensor, got {type(getattr(p, name)).__name__}")
    grid = p.grid
    R, G = grid.shape
    N, K = p.out_features, p.in_features
    expect = {
        "bits": (torch.uint8, (R, G)),
        "block_offset": (torch.int32, (R, G)),
        "group_order": (torch.int32, (R, G)),
        "segment_ptr": (torch.int32, (R, 10)),
        "scales": (torch.float16, (G, N)),
        "zeros": (torch.float16, (G, N)),
    }
    for name, (dtype, shape) in expect.items():
        t = getattr(p, name)
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise ValueError(f"{where}: {name} must be {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
    for name, n in (("row_perm", N), ("col_perm", K)):
        t = getattr(p, name)
        if t.dtype != torch.int32 or t.dim() != 1 or t.numel() not in (0, n):
            raise ValueError(f"{where}: {name} must be int32 [{n}] or [0], got {t.dtype} {tuple(t.shape)}")
        if t.numel() and not torch.equal(torch.sort(t.long()).values, torch.arange(n, device=t.device)):
            raise ValueError(f"{where}: {name} is not a permutation of 0..{n - 1}")
    if p.qweight.dtype != torch.int32 or p.qweight.dim() != 1:
        raise ValueError(f"{where}: qweight must be a 1-D int32 tensor, got {p.qweight.dtype} {tuple(p.qweight.shape)}")
    b = p.bits.to("cpu", torch.int64)
    if b.numel() and (b.min() < 1 or b.max() > 8):
        raise ValueError(f"{where}: bit widths must lie in 1..8")
    order, seg, offsets = expected_tables(grid, b)
    for name, want in (("segment_ptr", seg), ("group_order", order), ("block_offset", offsets)):
        bad = getattr(p, name).to("cpu", torch.int64) != want
        if bad.any():
            r = _first_bad(bad)
            raise ValueError(f"{where}: {name}[{r}] is {getattr(p, name)[r].tolist()} but the bit map needs {want[r].tolist()}")
    need = qweight_words(grid, p.bits)
    if p.qweight.numel() != need:
        raise ValueError(f"{where}: qweight holds {p.qweight.numel()} words but the bit map needs {need} (truncated or corrupt)")
    s = p.scales.float()
    if not (torch.isfinite(s) & (s > 0)).all():
        raise ValueError(f"{where}: scales must be finite and > 0 (found NaN, inf, zero or negative)")
    z = p.zeros.float()
    zmax = (2.0 ** grid.expand_rows(b).t().to(z.device, torch.float32)) - 1  # [G, N] per (group, row)
    if not (torch.isfinite(z) & (z == torch.round(z)) & (z >= 0) & (z <= zmax)).all():
        raise ValueError(f"{where}: zeros must be integers in [0, 2^b - 1] for their block's width b")


def qweight_words(grid: BlockGrid, bits: torch.Tensor) -> int:
    """int32 words of ``qweight`` for a bit map: every block's stored columns (a ragged last group
    rounds up to a whole word) x rows x bits / 32."""
    R, G = grid.shape
    stored_cols = torch.tensor([grid.stored_cols(j) for j in range(G)], dtype=torch.int64)
    rows = torch.tensor([grid.rows_in(r) for r in range(R)], dtype=torch.int64)
    return int((rows[:, None] * stored_cols[None, :] * bits.to("cpu", torch.int64)).sum()) // 32


def packed_nbytes(bits: torch.Tensor, n_row_perm: int, n_col_perm: int, out_features: int, in_features: int,
                  block_rows: int, group_size: int) -> int:
    """:attr:`PackedWeight.nbytes` from the bit map and geometry alone (no packing needed)."""
    grid = BlockGrid(out_features, in_features, block_rows, group_size)
    R, G = grid.shape
    return (4 * qweight_words(grid, bits) + R * G * (1 + 4 + 4) + R * 10 * 4 + 2 * 2 * G * out_features
            + 4 * (n_row_perm + n_col_perm))


def layout_aligned4(block_offset: torch.Tensor, out_features: int, block_rows: int) -> bool:
    """True when every row-block's row count and every block offset is a multiple of 4 words, i.e.
    4 consecutive rows of any sub-plane word form one 16-byte-aligned chunk (relative to qweight's
    start). The format does not promise it; a kernel may use 128-bit loads only when this was
    checked on the real offsets. block_offset: int32 [R, G] (real values, not traced)."""
    if block_rows % 4 or (out_features % block_rows) % 4:
        return False
    return bool((block_offset.to("cpu", torch.int64) % 4 == 0).all())
