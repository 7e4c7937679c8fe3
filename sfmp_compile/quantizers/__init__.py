"""Quantizers inside the blocks: each maps a reordered weight and a per-(row, group) bit width to
(codes, scales, zeros) that the packed format stores. ``minmax`` is round-to-nearest with an optional
clip search; ``gptq`` adds error feedback from calibration Hessians."""
from .minmax import minmax_quantize, dequantize_groups  # noqa: F401
