"""Which op runs a layer: one table from (layout, device type) to a kernel, and the call itself.

  ======== ========= ================================== ====================================
  layout   device    kernel (op)                        numerics
  ======== ========= ================================== ====================================
  packed   cuda      triton (sfmp::linear_triton)       fp32 accumulation, activation dtype
  panel    cpu       cpu    (sfmp::linear_cpu, C++)     int8 activations, exact int32 sums
                     precise (the same op, residual)    int8 + int8 residual activations
  packed   cpu       the same two kernels, reading the packed order (slower from DRAM: strided)
  packed   any other ref    (sfmp::linear_ref)          exact fp32 (the oracle)
  int4     cpu       int4   (sfmp::linear_cpu_int4)     bf16 activations (SQNR >= 35 dB)
  ======== ========= ================================== ====================================

On CPU the user picks with ``cpu_kernel`` (:data:`CPU_KERNELS`): "packed" (the default: the C++
kernel, true-bit resident weights held in the panel layout, the packed words in its read order;
the reference where it cannot be built), "precise" (the same
kernel with residual activations: the model's logits within ~75 dB of the exact op instead of
~30, for 1.3-1.5x the kernel time), "int4" (torch's int4 kernel, layers of <= 4-bit blocks widened
to 4 bits) or "reference" (the exact op).
``interp`` (sfmp::linear_triton_interp) runs the generated kernels on CPU through Triton's
interpreter, for tests; it is never chosen automatically. A layout with no kernel on the input's
device (the int4 layout on a GPU) runs from its packed form there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from ..format import PackedWeight
from ..layouts import SFMPWeight, cpu_int4
from . import cpu, reference, triton  # noqa: F401  (importing them registers the ops)
from . import cpu_int4 as int4_op


def _packed_args(w: SFMPWeight) -> tuple:
    d = w.data
    return (d["qweight"], d["bits"], d["block_offset"], d["group_order"], d["segment_ptr"], d["scales"],
            d["zeros"], w.row_perm, w.col_perm, w.out_features, w.in_features, w.block_rows, w.group_size)


def width_mask(w: SFMPWeight) -> int:
    """The Triton ops' trailing int: the layer's width set and its 4-word alignment bit."""
    from ..codegen.generate import width_mask as mask
    return mask(w.widths, aligned4=w.aligned4)


def _int4_args(w: SFMPWeight) -> tuple:
    return (w.data["w4"], w.data["sz"], w.row_perm, w.col_perm, w.out_features, w.in_features,
            cpu_int4.int4_group(w.group_size, w.in_features))


@dataclass(frozen=True)
class Kernel:
    """One GEMM implementation: the layout it prefers, its op, its arguments after ``x``, and any
    other layouts it reads as they are."""

    layout: str
    op: Callable[[], object]  # -> the OpOverload (looked up lazily: torch.ops attributes)
    args: Callable[[SFMPWeight], tuple]
    also_reads: tuple[str, ...] = ()

    def reads(self, layout: str) -> bool:
        return layout == self.layout or layout in self.also_reads


def _cpu_args(w: SFMPWeight, residual: bool = False) -> tuple:
    return (*_packed_args(w), cpu.flags(residual=residual, panel=w.layout == "panel"))


KERNELS = {
    "ref": Kernel("packed", lambda: torch.ops.sfmp.linear_ref.default, _packed_args),
    "triton": Kernel("packed", lambda: torch.ops.sfmp.linear_triton.default,
                     lambda w: (*_packed_args(w), width_mask(w))),
    "interp": Kernel("packed", lambda: torch.ops.sfmp.linear_triton_interp.default,
                     lambda w: (*_packed_args(w), width_mask(w))),
    "cpu": Kernel("panel", cpu.linear_op, _cpu_args, also_reads=("packed",)),
    "precise": Kernel("panel", cpu.linear_op, lambda w: _cpu_args(w, residual=True), also_reads=("packed",)),
    "int4": Kernel("int4", lambda: torch.ops.sfmp.linear_cpu_int4.default, _int4_args),
}
# (layout, device type) -> kernel; device type None = any other device.
TABLE = {("packed", "cuda"): "triton", ("packed", "cpu"): "cpu", ("packed", None): "ref", ("panel", "cpu"): "cpu",
         ("int4", "cpu"): "int4"}
BACKENDS = ("auto", *KERNELS)
CPU_KERNELS = ("packed", "precise", "int4", "reference")


def kernel_for(layout: str, device, cpu_kernel: str = "packed") -> str | None:
    """The kernel that runs a layer held in ``layout`` on ``device`` (None: no kernel there).
    On CPU, ``cpu_kernel="reference"`` keeps the packed layout on the exact op, and the C++ kernel
    falls back to it where it cannot be built (``cpu.available``)."""
    dev = torch.device(device).type
    name = TABLE.get((layout, dev)) or TABLE.get((layout, None))
    if name == "cpu" and (cpu_kernel == "reference" or not cpu.available()):
        return "ref"
    return "precise" if name == "cpu" and cpu_kernel == "precise" else name


def preferred_layout(w: SFMPWeight, device, cpu_kernel: str = "packed") -> str:
    """The layout a layer should be held in to run on ``device``: on CPU "panel" for the C++
    kernel ("packed" / "precise"), "int4" for a layer whose blocks all fit 4 bits when
    ``cpu_kernel="int4"``; "packed" everywhere else (the reference, GPUs)."""
    if cpu_kernel not in CPU_KERNELS:
        raise ValueError(f"cpu_kernel must be one of {CPU_KERNELS}, got {cpu_kernel!r}")
    if torch.device(device).type == "cpu":
        if cpu_kernel == "int4" and w.can_take("int4"):
            return "int4"
        if kernel_for("packed", device, cpu_kernel) in ("cpu", "precise"):
            return "panel"
    return "packed"


def op_call(w: SFMPWeight, device, backend: str = "auto", cpu_kernel: str = "packed") -> tuple:
    """``(op, args_after_x)`` for ``w`` on ``device``: the graph or caller runs ``op(x, *args)``.
    ``w`` must already be in the kernel's layout (see :func:`preferred_layout`)."""
    name = kernel_for(w.layout, device, cpu_kernel) if backend == "auto" else backend
    if name in ("cpu", "precise") and not cpu.available():
        raise RuntimeError("the CPU kernel could not be built here (see the warning above); use backend='ref'")
    if name is None or not KERNELS[name].reads(w.layout):
        raise ValueError(f"no {backend!r} kernel for the {w.layout!r} layout on {torch.device(device).type}")
    k = KERNELS[name]
    return k.op(), k.args(w)


def embedding_call(w: SFMPWeight, device, cpu_kernel: str = "packed") -> tuple:
    """``(op, args_after_ids)`` reading rows of ``w`` (packed or panel layout) as an embedding on
    ``device``: the C++ row decoder on CPU, else the reference (which dequantizes the whole weight;
    packed layout only)."""
    if w.layout not in ("packed", "panel"):
        raise ValueError(f"an embedding reads the packed or panel layout, not {w.layout!r}")
    if kernel_for(w.layout, device, cpu_kernel) in ("cpu", "precise"):
        return torch.ops.sfmp.embedding_cpu.v2, (*_packed_args(w), cpu.flags(panel=w.layout == "panel"))
    if w.layout != "packed":
        raise ValueError("the reference embedding reads the packed layout only")
    return torch.ops.sfmp.embedding_ref.default, _packed_args(w)


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


def sfmp_linear(x: Tensor, w: SFMPWeight | PackedWeight, bias: Tensor | None = None, *, backend: str = "auto",
                cpu_kernel: str = "packed") -> Tensor:
    """y = x @ Ŵᵀ (+ bias) for one SFMP layer. x: [..., in_features] fp16 / bf16 / fp32; returns
    [..., out_features] in x.dtype.

    backend: "auto" (the table above, by ``w``'s layout, x's device and ``cpu_kernel``), or a kernel name:
      "ref" / "triton" / "interp" / "cpu" run the packed layout (converted if ``w`` is held otherwise);
      "int4" runs torch's int4 kernel, converting a packed layer not yet in the int4 layout when it
      is eligible and not being traced (a bare PackedWeight gets a memoised copy), else the reference.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    packed = w if isinstance(w, PackedWeight) else None
    if packed is not None:
        w = as_weight(packed)
    name = kernel_for(w.layout, x.device, cpu_kernel) if backend == "auto" else backend
    if name is None:  # no kernel for this layout here: run its packed form
        name = kernel_for("packed", x.device, cpu_kernel)
    want = KERNELS[name].layout
    if not KERNELS[name].reads(w.layout):
        if want == "int4" and (_compiling() or not w.can_take("int4")):
            name, want = "ref", "packed"
        if want != w.layout:
            w = as_weight(packed, want) if packed is not None else w.to_layout(want)
    if w.device != x.device:
        w = w.to(x.device)
    if name == "int4":
        y = int4_op.linear_cpu(x, *_int4_args(w))
    else:
        op, args = op_call(w, x.device, name)
        y = op(x, *args)
    return y + bias.to(y.dtype) if bias is not None else y
