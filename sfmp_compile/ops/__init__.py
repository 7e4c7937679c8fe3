"""Custom ops over the packed format. ``reference`` is the ground truth every kernel is tested against."""
from .reference import linear_ref, packed_args  # noqa: F401
