"""``SFMPWeight``: one quantized linear weight, in the layout its kernels run from.

The checkpoint form is format v1 (:class:`sfmp_compile.format.PackedWeight`): hardware-neutral,
true-bit. A *layout* is a form of the same weight prepared for one kind of kernel; every layout
converts to the packed form exactly, so a layer can be saved, moved or compared from any of them.

  ======== ======================================= ==================================================
  layout   tensors                                 runs on
  ======== ======================================= ==================================================
  packed   format v1 (qweight, bits, block_offset, the reference op (any device), the Triton kernels
           group_order, segment_ptr, scales, zeros) (CUDA, or the interpreter), the C++ CPU kernel
  panel    the packed tensors, qweight's words in   the C++ CPU kernel (the default for CPU layers:
           the CPU kernel's read order, panel.py    one sequential run per 32-row chunk)
  int4     int4 codes + bf16 scale/zero (+ what    torch's int4 CPU kernel (blocks <= 4 bits), see
           the exact inverse needs), cpu_int4.py   layouts/cpu_int4.py (opt-in: ``cpu_kernel="int4"``)
  ======== ======================================= ==================================================

Row and column permutations are not part of a layout: every layout stores rows and columns in
reordered order, and the permutations ride beside it (``row_perm`` / ``col_perm``), so a compile
pass can split them out of any layer as explicit gathers and fold them.

Adding a layout: a module with ``NAME``, ``TENSORS``, ``eligible(bits)``, ``from_packed(p)`` and
``to_packed(...)`` like ``panel.py``, and one line in ``LAYOUTS``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

import torch
from torch import Tensor

from ..format import PackedWeight, layout_aligned4, packed_nbytes
from . import cpu_int4, panel

_PACKED_TENSORS = ("qweight", "bits", "block_offset", "group_order", "segment_ptr", "scales", "zeros")


def _packed_from_packed(p: PackedWeight) -> dict[str, Tensor]:
    return {f: getattr(p, f) for f in _PACKED_TENSORS}


def _packed_to_packed(t, row_perm, col_perm, block_rows, group_size, out_features, in_features) -> PackedWeight:
    return PackedWeight(**t, row_perm=row_perm, col_perm=col_perm, out_features=out_features,
                        in_features=in_features, block_rows=block_rows, group_size=group_size)


PACKED = SimpleNamespace(NAME="packed", TENSORS=_PACKED_TENSORS, eligible=lambda bits: True,
                         from_packed=_packed_from_packed, to_packed=_packed_to_packed)
LAYOUTS = {m.NAME: m for m in (PACKED, panel, cpu_int4)}


@dataclass(frozen=True, eq=False)
class SFMPWeight:
    """One quantized linear layer's weight. Immutable; conversions return new objects.

    layout        a key of ``LAYOUTS``; ``data`` holds that layout's tensors by name
    row_perm      int32 [N] or [0]: reordered row i is original row row_perm[i] ([0] = identity)
    col_perm      int32 [K] or [0]: reordered column j is original column col_perm[j]
    widths        the distinct block bit widths, ascending (a constant for tracing and codegen)
    aligned4      every block offset and row-block row count of the packed form is a multiple
                  of 4 words (lets a kernel use 128-bit loads); False unless checked on values
    """

    layout: str
    data: dict[str, Tensor]
    row_perm: Tensor
    col_perm: Tensor
    out_features: int
    in_features: int
    block_rows: int
    group_size: int
    widths: tuple[int, ...]
    aligned4: bool = False

    META = ("out_features", "in_features", "block_rows", "group_size")

    @classmethod
    def from_packed(cls, p: PackedWeight, layout: str = "packed") -> "SFMPWeight":
        """Wrap a PackedWeight (its tensors are shared, not copied) and convert to ``layout``."""
        widths = tuple(sorted(set(p.bits.to("cpu", torch.int64).flatten().tolist())))
        w = cls("packed", _packed_from_packed(p), p.row_perm, p.col_perm, p.out_features, p.in_features,
                p.block_rows, p.group_size, widths,
                layout_aligned4(p.block_offset, p.out_features, p.block_rows))
        return w.to_layout(layout)

    # --- conversions -------------------------------------------------------------------------
    def packed(self) -> PackedWeight:
        """The checkpoint form, bit for bit (an unpack + pack for layouts other than packed)."""
        return LAYOUTS[self.layout].to_packed(self.data, self.row_perm, self.col_perm, self.block_rows,
                                              self.group_size, self.out_features, self.in_features)

    def can_take(self, layout: str) -> bool:
        """Whether this weight can be held in ``layout`` (e.g. "int4" needs blocks of <= 4 bits)."""
        return layout in LAYOUTS and (layout == self.layout or LAYOUTS[layout].eligible(self.data["bits"]))

    def to_layout(self, layout: str) -> "SFMPWeight":
        """The same weight in ``layout`` (self when already there). Exact both ways."""
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(LAYOUTS)}")
        if layout == self.layout:
            return self
        p = self.packed()
        dev = self.row_perm.device
        data = {k: v.to(dev) for k, v in LAYOUTS[layout].from_packed(p).items()}
        return replace(self, layout=layout, data=data)

    def to(self, device) -> "SFMPWeight":
        """On ``device`` (tensors moved; the layout is kept)."""
        mv = lambda t: t.to(device)  # noqa: E731
        return replace(self, data={k: mv(v) for k, v in self.data.items()}, row_perm=mv(self.row_perm),
                       col_perm=mv(self.col_perm))

    # --- facts ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.row_perm.device

    @property
    def bits(self) -> Tensor:
        """uint8 [R, G] block bit widths (every layout keeps them)."""
        return self.data["bits"]

    def meta(self) -> dict[str, int]:
        return {f: int(getattr(self, f)) for f in self.META}

    def state(self) -> dict[str, Tensor]:
        """Every tensor held: the layout's, then the permutations (what a module registers as buffers)."""
        return {**self.data, "row_perm": self.row_perm, "col_perm": self.col_perm}

    @property
    def nbytes(self) -> int:
        """Resident bytes: every tensor this layout holds, permutations included."""
        return sum(t.numel() * t.element_size() for t in self.state().values())

    @property
    def stored_bytes(self) -> int:
        """Bytes of the packed checkpoint form (what a checkpoint stores), without rebuilding it."""
        return packed_nbytes(self.bits, self.row_perm.numel(), self.col_perm.numel(), **self.meta())
