"""Classifying a scenario's exception for benchmarks/hostile.py: a named error of this package is a
clear refusal, anything else a crash."""
from __future__ import annotations

import os
import traceback

PKG = os.sep + "sfmp_compile" + os.sep



def classify_exception(e: BaseException) -> tuple[str, str]:
    """"clear" for CheckpointError / SFMPConfigError, for a ValueError/TypeError/OSError raised by
    an explicit ``raise`` inside sfmp_compile, and for Python's own "unexpected keyword argument";
    "crash" for anything else (a raw IndexError, RuntimeError from torch, MemoryError...)."""
    from sfmp_compile import CheckpointError, SFMPConfigError
    msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:240] if str(e).strip() else ''}"
    if isinstance(e, (CheckpointError, SFMPConfigError)):
        return "clear", msg
    if isinstance(e, TypeError) and "unexpected keyword argument" in str(e):
        return "clear", msg
    if isinstance(e, (ValueError, TypeError, OSError)):
        frames = traceback.extract_tb(e.__traceback__)
        if frames and PKG in frames[-1].filename and (frames[-1].line or "").lstrip().startswith("raise"):
            return "clear", msg
    return "crash", msg + " @ " + "|".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in traceback.extract_tb(e.__traceback__)[-3:])


