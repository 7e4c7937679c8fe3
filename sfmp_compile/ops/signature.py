"""The argument lists of the sfmp ops, written once.

Every op takes ``x`` first, then its layout's tensors, then ``row_perm`` and ``col_perm``, then the
geometry ints (and op-specific ints last). torch.library infers an op's schema from the Python
signature, so :func:`typed` gives a ``*args`` implementation the signature its schema is read from.
"""
from __future__ import annotations

import inspect

from torch import Tensor

PACKED = (("qweight", Tensor), ("bits", Tensor), ("block_offset", Tensor), ("group_order", Tensor),
          ("segment_ptr", Tensor), ("scales", Tensor), ("zeros", Tensor), ("row_perm", Tensor),
          ("col_perm", Tensor), ("out_features", int), ("in_features", int), ("block_rows", int),
          ("group_size", int))
CPU_INT4 = (("w4", Tensor), ("sz", Tensor), ("row_perm", Tensor), ("col_perm", Tensor),
            ("out_features", int), ("in_features", int), ("gc", int))


def typed(first: str, params, *extra):
    """Decorator: give ``fn(first, *args)`` the signature ``(first: Tensor, *params, *extra) -> Tensor``."""
    P = inspect.Parameter
    sig = inspect.Signature([P(n, P.POSITIONAL_OR_KEYWORD, annotation=t)
                             for n, t in ((first, Tensor), *params, *extra)], return_annotation=Tensor)

    def deco(fn):
        fn.__signature__ = sig
        return fn
    return deco


def names(params) -> tuple[str, ...]:
    return tuple(n for n, _ in params)
