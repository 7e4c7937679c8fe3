"""SFMPLinear: an nn.Module that holds only the packed buffers of one quantized linear layer."""
from __future__ import annotations

import torch
from torch import nn

from .format import PackedWeight, validate
from .codegen import packed_of, prepare_module_, sfmp_linear
from .ops.reference import packed_args  # noqa: F401  (registers sfmp::linear_ref)


class SFMPLinear(nn.Module):
    """Drop-in replacement for nn.Linear (y = x Ŵᵀ + b) whose weight lives in the SFMP packed format.

    The float weight is gone; buffers are the PackedWeight tensors (saved in state_dict) and the
    layer geometry is plain int attributes (so Dynamo treats it as constant).
    x: [..., in_features] float16/bfloat16/float32 -> [..., out_features] same dtype.
    """

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        validate(packed)
        for name, t in packed.tensors().items():
            self.register_buffer(name, t)
        for name, v in packed.meta().items():
            setattr(self, name, v)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @property
    def packed(self) -> PackedWeight:
        # packed_of rebuilds the true-bit codes exactly when the layer holds its CPU int4 form.
        return packed_of(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Dispatch by device: CUDA -> generated Triton kernels; CPU -> the int4 fast path once
        # prepare_for("cpu") converted the layer (else the exact reference). See docs/KERNELS.md.
        return sfmp_linear(x, self, self.bias)

    def prepare_for(self, device) -> "SFMPLinear":
        """Move to ``device`` and convert in place to the form its kernels run from.

        On CPU an all-<=4-bit layer swaps the true-bit codes for the int4 CPU layout (state_dict
        still writes the true-bit format). Call before torch.compile. Returns self.
        """
        return prepare_module_(self, device)

    def extra_repr(self) -> str:
        b = self.bits.to(torch.int64)
        counts = self.packed.grid.weight_counts().to(b.device)
        avg = float((b * counts).sum()) / (self.out_features * self.in_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, avg_bits={avg:.3f}, "
                f"block={self.block_rows}x{self.group_size}, bias={self.bias is not None}")
