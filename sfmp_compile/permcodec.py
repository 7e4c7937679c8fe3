"""Format v2's stored form of a layer's row and column permutations (docs/FORMAT.md, "Permutations").

In memory a layer keeps int32 permutations (what the kernels gather through); a checkpoint stores,
per axis, the smallest exact description of each as one self-describing uint8 tensor (so it rides
through any state-dict loader as a plain buffer): empty for the identity, else a tag byte and a
payload.

  ==== ========= ======================= ==========================================================
  tag  encoding  payload (bytes)         rebuilds the permutation
  ==== ========= ======================= ==========================================================
  -    identity  (the tensor is empty)   nothing stored, nothing gathered
  1    pattern   ceil(n·k / 8)           per original index a k-bit key: the rank of the bit pattern
                                         of the slot it lands in, among the layer's distinct patterns
  2    slot      ceil(n·k / 8)           per original index a k-bit key: the slot it lands in
  3    int16     2·n, little-endian      the permutation itself as uint16 (n <= 65536)
  4    int32     4·n, little-endian      the permutation itself (format v1's values)
  5    packed    ceil(n·k / 8)           the permutation itself, k = bits of n - 1 per entry
  ==== ========= ======================= ==========================================================

A *slot* is a row-block (rows) or a column group (columns); a slot's *pattern* is its row (column) of
the bit map. ``plan.regroup_orders`` fills the slots sharing a pattern with those slots' members in
ascending original order, so after regrouping (the RTN default) the order is a function of which
pattern each index belongs to: a stable sort by key, the keys' slots taken in slot order. ``slot``
covers any order whose slots each hold ascending indices (``reordering.canonical``); a salience sort
kept as is (GPTQ's act-order) needs the permutation itself: ``packed`` (k = 10 bits per entry for
n = 576, against 16 for int16), int16 only where it is as short (k = 16). The writer picks the shortest (ties: the lower tag) and
the reader accepts only that choice, so a permutation has one stored form and a checkpoint's bytes
(and checksums) survive load and save unchanged.
"""
from __future__ import annotations

import torch

from .blocks import BlockGrid
from .format import PackedWeight

TAGS = {1: "pattern", 2: "slot", 3: "int16", 4: "int32", 5: "packed"}


def slot_labels(grid: BlockGrid, bits: torch.Tensor, axis: int, encoding: str) -> tuple[list[int], torch.Tensor, int]:
    """(slot sizes, label int64 [S] per slot, number of labels) of one axis (0 rows, 1 columns).

    ``pattern`` labels a slot by the rank of its bit pattern among the distinct patterns in order of
    first appearance; ``slot`` labels each slot by itself. bits: uint8 [R, G], already validated."""
    b = bits.to("cpu", torch.int64)
    if axis == 0:
        sizes = [grid.rows_in(r) for r in range(grid.n_row_blocks)]
        pats = [tuple(b[r].tolist()) for r in range(grid.n_row_blocks)]
    else:
        sizes = [grid.cols_in(j) for j in range(grid.n_groups)]
        pats = [tuple(b[:, j].tolist()) for j in range(grid.n_groups)]
    if encoding == "slot":
        return sizes, torch.arange(len(sizes)), len(sizes)
    rank: dict[tuple, int] = {}
    labels = torch.tensor([rank.setdefault(p, len(rank)) for p in pats], dtype=torch.int64)
    return sizes, labels, len(rank)


def key_width(n_labels: int) -> int:
    """Bits per key for ``n_labels`` distinct labels (>= 2); also per entry of a packed permutation of n_labels."""
    return max(1, (n_labels - 1).bit_length())


def _pack_keys(keys: torch.Tensor, k: int) -> torch.Tensor:
    """int64 [n] keys < 2^k -> uint8 [ceil(n·k/8)]: bit t of key i at stream bit i·k + t, LSB first."""
    bitsof = (keys[:, None] >> torch.arange(k)) & 1
    flat = torch.nn.functional.pad(bitsof.reshape(-1), (0, -(keys.numel() * k) % 8))
    return (flat.view(-1, 8) << torch.arange(8)).sum(1).to(torch.uint8)


def _unpack_keys(data: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of _pack_keys -> (int64 [n] keys, True if the padding bits are all zero)."""
    stream = ((data.to(torch.int64)[:, None] >> torch.arange(8)) & 1).reshape(-1)
    keys = (stream[: n * k].view(n, k) << torch.arange(k)).sum(1)
    return keys, not bool(stream[n * k:].any())


def rebuild(keys: torch.Tensor, labels: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The order a key vector describes: per label, its members in ascending original order fill
    that label's slots in slot order. keys int64 [n] (each < number of labels, and each label
    holding exactly its slots' total size: checked by the caller); returns int64 [n]."""
    members = torch.argsort(keys, stable=True)  # label by label, ascending inside each
    n_labels = int(labels.max()) + 1 if labels.numel() else 0
    size_t = torch.tensor(sizes, dtype=torch.int64)
    per_label = torch.zeros(n_labels, dtype=torch.int64).index_add_(0, labels, size_t)
    label_start = torch.cumsum(per_label, 0) - per_label
    out, used = [], torch.zeros(n_labels, dtype=torch.int64)
    for s, (lab, size) in enumerate(zip(labels.tolist(), sizes)):
        start = int(label_start[lab] + used[lab])
        out.append(members[start:start + size])
        used[lab] += size
    return torch.cat(out) if out else members


def _keys_of(perm: torch.Tensor, labels: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Per original index, the label of the slot it sits in under ``perm`` (int64 [n])."""
    slot_of_pos = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.int64))
    keys = torch.empty_like(perm)
    keys[perm] = labels[slot_of_pos]
    return keys


def _le_bytes(p: torch.Tensor, width: int) -> torch.Tensor:
    """int64 [n] values < 2^(8·width) -> uint8 [n·width], little-endian."""
    return torch.stack([(p >> (8 * i)) & 255 for i in range(width)], 1).reshape(-1).to(torch.uint8)


def encode(perm: torch.Tensor, grid: BlockGrid, bits: torch.Tensor, axis: int) -> torch.Tensor:
    """The stored form of one permutation: uint8 [0] (identity) or [1 + payload] (module table).

    perm: int [n] (n = N for axis 0, K for axis 1) or [0] for the identity, a valid permutation;
    bits: uint8 [R, G] the layer's bit map. The result decodes to ``perm`` bit for bit."""
    n = grid.out_features if axis == 0 else grid.in_features
    p = perm.to("cpu", torch.int64)
    if p.numel() == 0 or torch.equal(p, torch.arange(n)):
        return torch.zeros(0, dtype=torch.uint8)
    forms = []
    for tag, enc in ((1, "pattern"), (2, "slot")):
        sizes, labels, n_labels = slot_labels(grid, bits, axis, enc)
        if n_labels < 2:
            continue
        keys = _keys_of(p, labels, sizes)
        if torch.equal(rebuild(keys, labels, sizes), p):
            forms.append((tag, _pack_keys(keys, key_width(n_labels))))
    forms.append((3, _le_bytes(p, 2)) if n <= 1 << 16 else (4, _le_bytes(p, 4)))
    forms.append((5, _pack_keys(p, key_width(n))))
    tag, payload = min(forms, key=lambda f: (f[1].numel(), f[0]))
    return torch.cat([torch.tensor([tag], dtype=torch.uint8), payload])


def _decode_keys(enc: str, payload: torch.Tensor, grid: BlockGrid, bits: torch.Tensor, axis: int, n: int,
                 what: str) -> torch.Tensor:
    sizes, labels, n_labels = slot_labels(grid, bits, axis, enc)
    if n_labels < 2:
        raise ValueError(f"{what} needs at least 2 distinct {'row-block' if axis == 0 else 'group'} "
                         f"{'patterns' if enc == 'pattern' else 'slots'}, the bit map has {n_labels}")
    k = key_width(n_labels)
    if payload.numel() != -(-n * k // 8):
        raise ValueError(f"{what} holds {payload.numel()} payload bytes, {n} keys of {k} bits need {-(-n * k // 8)}")
    keys, clean = _unpack_keys(payload, n, k)
    if not clean:
        raise ValueError(f"{what} has non-zero padding bits after its {n} keys")
    if bool((keys >= n_labels).any()):
        raise ValueError(f"{what} holds a key >= {n_labels} (the number of labels)")
    counts = torch.bincount(keys, minlength=n_labels)
    need = torch.zeros(n_labels, dtype=torch.int64).index_add_(0, labels, torch.tensor(sizes, dtype=torch.int64))
    if not torch.equal(counts, need):
        raise ValueError(f"{what} assigns {counts.tolist()} indices per label but the bit map's slots hold {need.tolist()}")
    return rebuild(keys, labels, sizes)


def decode(data: object, grid: BlockGrid, bits: torch.Tensor, axis: int, where: str, name: str) -> torch.Tensor:
    """The int32 permutation ([n], or [0] for the identity) a stored code describes.

    Untrusted input: anything but the exact form :func:`encode` writes for a permutation raises
    ValueError naming ``where`` and ``name``. bits: uint8 [R, G], already checked for shape and
    range 1..8."""
    n = grid.out_features if axis == 0 else grid.in_features
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 1:
        got = f"{data.dtype} {tuple(data.shape)}" if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"{where}: {name} must be a 1-D uint8 tensor, got {got}")
    if data.numel() == 0:
        return torch.zeros(0, dtype=torch.int32)
    data = data.to("cpu", torch.int64)
    tag = int(data[0])
    if tag not in TAGS:
        raise ValueError(f"{where}: {name} has encoding tag {tag}, expected one of {sorted(TAGS)} ({list(TAGS.values())})")
    enc, payload, what = TAGS[tag], data[1:], f"{where}: {name} ({TAGS[tag]})"
    if enc in ("int16", "int32"):
        width = 2 if enc == "int16" else 4
        if enc == "int16" and n > 1 << 16:
            raise ValueError(f"{what} cannot hold a permutation of {n} entries (> 65536)")
        if payload.numel() != width * n:
            raise ValueError(f"{what} holds {payload.numel()} payload bytes, a permutation of {n} needs {width * n}")
        p = (payload.view(n, width) << (8 * torch.arange(width))).sum(1)
        if not torch.equal(torch.sort(p).values, torch.arange(n)):
            raise ValueError(f"{what} is not a permutation of 0..{n - 1}")
    elif enc == "packed":
        k = key_width(n)
        if payload.numel() != -(-n * k // 8):
            raise ValueError(f"{what} holds {payload.numel()} payload bytes, {n} entries of {k} bits need {-(-n * k // 8)}")
        p, clean = _unpack_keys(payload, n, k)
        if not clean:
            raise ValueError(f"{what} has non-zero padding bits after its {n} entries")
        if not torch.equal(torch.sort(p).values, torch.arange(n)):
            raise ValueError(f"{what} is not a permutation of 0..{n - 1}")
    else:
        p = _decode_keys(enc, payload, grid, bits, axis, n, what)
    if not torch.equal(encode(p, grid, bits, axis), data.to(torch.uint8)):
        raise ValueError(f"{what} is not the form this format writes for its permutation (the identity is stored "
                         "empty; otherwise the shortest of pattern, slot, int16/int32)")
    return p.to(torch.int32)


# A v2 layer in a checkpoint: the v1 tensors with each permutation replaced by its code.
PERM_CODES = {"row_perm": "row_perm_code", "col_perm": "col_perm_code"}
STORED_TENSORS = tuple(PERM_CODES.get(f, f) for f in PackedWeight.TENSOR_FIELDS)
_AXIS = {"row_perm": 0, "col_perm": 1}


def perm_codes(p: PackedWeight) -> dict[str, torch.Tensor]:
    """{"row_perm_code": uint8 [..], "col_perm_code": uint8 [..]}: the layer's permutations as v2 stores them."""
    return {code: encode(getattr(p, f), p.grid, p.bits, _AXIS[f]) for f, code in PERM_CODES.items()}


def from_stored(tensors: dict, meta: dict, where: str) -> PackedWeight:
    """The in-memory PackedWeight of a stored v2 layer (tensors: STORED_TENSORS name -> tensor; meta:
    PackedWeight.META_FIELDS), int32 permutations rebuilt. Checked only as far as decoding needs:
    call ``format.validate`` on the result. Raises ValueError naming the field."""
    for f in PackedWeight.META_FIELDS:
        v = meta[f]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{where}: {f} must be a positive integer, got {v!r}")
    grid = BlockGrid(meta["out_features"], meta["in_features"], meta["block_rows"], meta["group_size"])
    bits = tensors["bits"]
    if not isinstance(bits, torch.Tensor) or bits.dtype != torch.uint8 or tuple(bits.shape) != grid.shape:
        got = f"{bits.dtype} {tuple(bits.shape)}" if isinstance(bits, torch.Tensor) else type(bits).__name__
        raise ValueError(f"{where}: bits must be torch.uint8 {grid.shape}, got {got}")
    if bits.numel() and (int(bits.min()) < 1 or int(bits.max()) > 8):
        raise ValueError(f"{where}: bit widths must lie in 1..8")
    perms = {f: decode(tensors[code], grid, bits, _AXIS[f], where, code).to(bits.device) for f, code in PERM_CODES.items()}
    fields = {f: tensors[f] for f in PackedWeight.TENSOR_FIELDS if f not in PERM_CODES}
    return PackedWeight(**fields, **perms, **meta)


def stored_breakdown(p: PackedWeight) -> dict[str, int]:
    """Bits format v2 stores for one layer, by kind: codes (qweight, ragged-group padding included),
    scales_zeros (fp16 each per (row, group)), perms (the two permutation codes), maps (bit map,
    block offsets, walk order, segment table); total is their sum."""
    nbits = lambda t: 8 * t.numel() * t.element_size()  # noqa: E731
    codes = perm_codes(p)
    out = {"codes": nbits(p.qweight), "scales_zeros": nbits(p.scales) + nbits(p.zeros),
           "perms": sum(nbits(c) for c in codes.values()),
           "maps": sum(nbits(getattr(p, f)) for f in ("bits", "block_offset", "group_order", "segment_ptr"))}
    out["total"] = sum(out.values())
    return out
