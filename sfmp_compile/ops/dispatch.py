"""Which op runs a layer: one table from (layout, device type) to a kernel, and the call itself.

  ======== ========= ================================== ====================================
  layout   device    kernel (op)                        numerics
  ======== ========= ================================== ====================================
  packed   cuda      triton (sfmp::linear_triton)       fp32 accumulation, activation dtype
  packed   any other ref    (sfmp::linear_ref)          exact fp32 (the oracle)
  cpu      cpu       cpu    (sfmp::linear_cpu_int4)     bf16 activations (SQNR >= 35 dB)
  ======== ========= ================================== ====================================

``interp`` (sfmp::linear_triton_interp) runs the generated kernels on CPU through Triton's
interpreter, for tests; it is never chosen automatically. A layout with no kernel on the input's
device (the cpu layout on a GPU) runs from its packed form there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from ..format import PackedWeight
from ..layouts import SFMPWeight, cpu_int4
from . import cpu_int4 as cpu_op
from . import reference, triton  # noqa: F401  (importing them registers the ops)


def _packed_args(w: SFMPWeight) -> tuple:
    d = w.data
    return (d["qweight"], d["bits"], d["block_offset"], d["group_order"], d["segment_ptr"], d["scales"],
            d["zeros"], w.row_perm, w.col_perm, w.out_features, w.in_features, w.block_rows, w.group_size)


def width_mask(w: SFMPWeight) -> int:
    """The Triton ops' trailing int: the layer's width set and its 4-word alignment bit."""
    from ..codegen.generate import width_mask as mask
    return mask(w.widths, aligned4=w.aligned4)


def _cpu_args(w: SFMPWeight) -> tuple:
    return (w.data["w4"], w.data["sz"], w.row_perm, w.col_perm, w.out_features, w.in_features,
            cpu_int4.int4_group(w.group_size, w.in_features))


@dataclass(frozen=True)
class Kernel:
    """One GEMM implementation: the layout it reads, its op, and its arguments after ``x``."""

    layout: str
    op: Callable[[], object]  # -> the OpOverload (looked up lazily: torch.ops attributes)
    args: Callable[[SFMPWeight], tuple]


KERNELS = {
    "ref": Kernel("packed", lambda: torch.ops.sfmp.linear_ref.default, _packed_args),
    "triton": Kernel("packed", lambda: torch.ops.sfmp.linear_triton.default,
                     lambda w: (*_packed_args(w), width_mask(w))),
    "interp": Kernel("packed", lambda: torch.ops.sfmp.linear_triton_interp.default,
                     lambda w: (*_packed_args(w), width_mask(w))),
    "cpu": Kernel("cpu", lambda: torch.ops.sfmp.linear_cpu_int4.default, _cpu_args),
}
# (layout, device type) -> kernel; device type None = any other device.
TABLE = {("packed", "cuda"): "triton", ("packed", None): "ref", ("cpu", "cpu"): "cpu"}
BACKENDS = ("auto", *KERNELS)


def kernel_for(layout: str, device) -> str | None:
    dev = torch.device(device).type
    return TABLE.get((layout, dev)) or TABLE.get((layout, None))


def preferred_layout(w: SFMPWeight, device, cpu_kernel: str = "int4") -> str:
    """The layout a layer should be held in to run on ``device``: "cpu" for a CPU layer whose
    blocks all fit 4 bits (unless ``cpu_kernel="reference"``), else "packed"."""
    if torch.device(device).type == "cpu" and cpu_kernel == "int4" and w.can_take("cpu"):
        return "cpu"
    return "packed"


def op_call(w: SFMPWeight, device, backend: str = "auto") -> tuple:
    """``(op, args_after_x)`` for ``w`` on ``device``: the graph or caller runs ``op(x, *args)``.
    ``w`` must already be in the kernel's layout (see :func:`preferred_layout`)."""
    name = kernel_for(w.layout, device) if backend == "auto" else backend
    if name is None or KERNELS[name].layout != w.layout:
        raise ValueError(f"no {backend!r} kernel for the {w.layout!r} layout on {torch.device(device).type}")
    k = KERNELS[name]
    return k.op(), k.args(w)


# Callers holding a bare PackedWeight (tests, benchmarks) get its SFMPWeight, and prepared layouts
# they ask for, memoised on the qweight tensor (they live as long as it does).
_memo = WeakIdKeyDictionary()


def as_weight(w: SFMPWeight | PackedWeight, layout: str | None = None) -> SFMPWeight:
    """``w`` as an SFMPWeight (in ``layout`` when given), memoised for PackedWeights."""
    if isinstance(w, SFMPWeight):
        return w if layout is None else w.to_layout(layout)
    forms = _memo.setdefault(w.qweight, {})
    if "packed" not in forms:
        forms["packed"] = SFMPWeight.from_packed(w)
    layout = layout or "packed"
    if layout not in forms:
        forms[layout] = forms["packed"].to_layout(layout)
    return forms[layout]


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def sfmp_linear(x: Tensor, w: SFMPWeight | PackedWeight, bias: Tensor | None = None, *, backend: str = "auto") -> Tensor:
    """y = x @ Ŵᵀ (+ bias) for one SFMP layer. x: [..., in_features] fp16 / bf16 / fp32; returns
    [..., out_features] in x.dtype.

    backend: "auto" (the table above, by ``w``'s layout and x's device), or a kernel name:
      "ref" / "triton" / "interp" run the packed layout (converted if ``w`` is held otherwise);
      "cpu" runs the int4 kernel, converting a packed layer not yet in the cpu layout when it is
      eligible and not being traced (a bare PackedWeight gets a memoised copy), else the reference.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(w, PackedWeight):
        w = as_weight(w)
    name = kernel_for(w.layout, x.device) if backend == "auto" else backend
    if name is None:  # no kernel for this layout here: run its packed form
        name = kernel_for("packed", x.device)
    want = KERNELS[name].layout
    if want != w.layout:
        if want == "cpu" and (_compiling() or not w.can_take("cpu")):
            name, want = "ref", "packed"
        if want != w.layout:
            w = w.to_layout(want)
    if w.device != x.device:
        w = w.to(x.device)
    if name == "cpu":
        y = cpu_op.linear_cpu(x, *_cpu_args(w))
    else:
        op, args = op_call(w, x.device, name)
        y = op(x, *args)
    return y + bias.to(y.dtype) if bias is not None else y
