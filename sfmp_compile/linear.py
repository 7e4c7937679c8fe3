"""SFMPLinear: an nn.Module that holds one quantized linear layer as an ``SFMPWeight``."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import BlockGrid
from .format import PackedWeight, validate
from .layouts import LAYOUTS, SFMPWeight
from .permcodec import PERM_CODES, STORED_TENSORS, from_stored, perm_codes
from .ops.cpu_int4 import register_inductor_decompositions
from .ops.dispatch import preferred_layout, sfmp_linear


class SFMPLinear(nn.Module):
    """Drop-in replacement for nn.Linear (y = x Ŵᵀ + b) whose weight is an :class:`SFMPWeight`.

    The float weight is gone. The weight's tensors in its current layout are the module's buffers
    (so ``.to()`` moves them and Dynamo sees them as graph inputs) and its geometry is plain ints
    (constants to Dynamo). ``state_dict()`` always writes the checkpoint form (format v2: the packed
    tensors, and the permutations as ``row_perm_code`` / ``col_perm_code``, permcodec.py), whatever
    layout is held; loading one (or a v1 one, with int32 ``row_perm`` / ``col_perm``) keeps the
    layout the module is in. The int32 permutations the kernels read are buffers rebuilt from the
    codes and left out of the state dict; the codes are small buffers, so any state-dict loader
    (transformers' included) carries them like any other tensor.
    x: [..., in_features] float16/bfloat16/float32 -> [..., out_features] same dtype.
    """

    def __init__(self, weight: SFMPWeight | PackedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        if isinstance(weight, PackedWeight):
            validate(weight)
            weight = SFMPWeight.from_packed(weight)
        self._tensor_names: tuple[str, ...] = ()
        self.cpu_kernel = "packed"  # which CPU kernel runs it (ops.dispatch.CPU_KERNELS); see prepare_for
        self.set_weight(weight)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    def set_weight(self, w: SFMPWeight) -> None:
        """Hold ``w`` (same geometry) in place of the current weight."""
        for name in self._tensor_names:
            self._buffers.pop(name, None)
        persistent = w.layout == "packed"  # other layouts are saved as their packed form
        for name, t in w.state().items():
            # the permutations stay persistent buffers (transformers' loader replaces every
            # non-persistent buffer with empty memory) but _save_to_state_dict writes their codes
            self.register_buffer(name, t, persistent=persistent or name in PERM_CODES)
        codes = perm_codes(w.packed() if w.layout == "packed" else _perm_only(w))
        for name, t in codes.items():
            self.register_buffer(name, t.to(w.device))
        self._tensor_names = tuple(w.state()) + tuple(codes)
        self.layout = w.layout
        self.out_features, self.in_features = w.out_features, w.in_features
        self.block_rows, self.group_size = w.block_rows, w.group_size
        self.widths, self.aligned4 = w.widths, w.aligned4

    @property
    def sfmp_weight(self) -> SFMPWeight:
        """The weight as held (its tensors are this module's buffers)."""
        names = LAYOUTS[self.layout].TENSORS
        return SFMPWeight(self.layout, {n: getattr(self, n) for n in names}, self.row_perm, self.col_perm,
                          self.out_features, self.in_features, self.block_rows, self.group_size, self.widths,
                          self.aligned4)

    @property
    def packed(self) -> PackedWeight:
        """The checkpoint form, bit for bit (an unpack when another layout is held)."""
        return self.sfmp_weight.packed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sfmp_linear(x, self.sfmp_weight, self.bias, cpu_kernel=self.cpu_kernel)

    def prepare_for(self, device, cpu_kernel: str = "packed") -> "SFMPLinear":
        """Move to ``device`` and hold the layout its kernels run from (ops.dispatch.preferred_layout):
        the packed one, or with ``cpu_kernel="int4"`` on CPU the int4 layout for a layer whose blocks
        all fit 4 bits; ``cpu_kernel="reference"`` runs CPU calls on the exact op. Call before
        torch.compile. Returns self."""
        device = torch.device(device)
        w = self.sfmp_weight
        layout = preferred_layout(w, device, cpu_kernel)
        self.cpu_kernel = cpu_kernel
        if layout == "int4":
            register_inductor_decompositions()  # so a plain torch.compile sees through the op too
        self.set_weight(w.to_layout(layout).to(device))
        if self.bias is not None:
            self.bias.data = self.bias.data.to(device)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in PERM_CODES:
            destination.pop(prefix + name)  # stored as row_perm_code / col_perm_code
        if self.layout != "packed":
            for name, t in self.packed.tensors().items():
                if name not in PERM_CODES:
                    destination[prefix + name] = t

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        v2 = [prefix + n for n in STORED_TENSORS]
        v1 = [prefix + n for n in PackedWeight.TENSOR_FIELDS]
        keys = v2 if all(k in state_dict for k in v2) else v1
        if all(k in state_dict for k in keys):
            meta = {k: getattr(self, k) for k in SFMPWeight.META}
            where = f"{prefix}(SFMPLinear)"
            fields = {k[len(prefix):]: state_dict[k].detach().clone() for k in keys}
            try:
                incoming = from_stored(fields, meta | {"version": 2}, where) if keys is v2 else PackedWeight(**fields, **meta)
                validate(incoming, where=where)
            except ValueError as e:
                error_msgs.append(str(e))
                return
            w = SFMPWeight.from_packed(incoming.to(self.row_perm.device))
            self.set_weight(w.to_layout(self.layout) if w.can_take(self.layout) else w)
        elif strict:
            missing_keys.extend(k for k in v2 if k not in state_dict)
        # what was just loaded is held; the base class copies each persistent buffer onto itself
        held = {prefix + n: b for n, b in self._buffers.items() if n not in self._non_persistent_buffers_set}
        rest = {k: v for k, v in state_dict.items() if k not in v1 and k not in v2} | held
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        b = self.bits.to(torch.int64)
        counts = BlockGrid(self.out_features, self.in_features, self.block_rows, self.group_size).weight_counts()
        avg = float((b * counts.to(b.device)).sum()) / (self.out_features * self.in_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, avg_bits={avg:.3f}, "
                f"block={self.block_rows}x{self.group_size}, layout={self.layout}, bias={self.bias is not None}")


def _perm_only(w: SFMPWeight) -> PackedWeight:
    """A PackedWeight carrying ``w``'s permutations, bit map and geometry (all permcodec.perm_codes
    reads), without unpacking another layout's codes."""
    empty = torch.zeros(0)
    return PackedWeight(qweight=empty, bits=w.bits, block_offset=empty, group_order=empty, segment_ptr=empty,
                        scales=empty, zeros=empty, row_perm=w.row_perm, col_perm=w.col_perm, **w.meta())
