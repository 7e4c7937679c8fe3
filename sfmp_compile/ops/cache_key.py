"""Make AOTAutograd's cache key change when what an sfmp op lowers to changes.

That cache keys a graph before it is decomposed or lowered, so a graph holding one of our ops
would replay a stale compilation after our kernels, launcher or decomposition change. It does
hash the Triton sources registered for an op name (``torch._library.triton``), so we register a
stub ``@triton.jit`` function whose source carries a hash of the files that decide the lowering.
The stub's source lives in memory (``linecache``), so nothing is written to disk.
Private torch API: best effort, never fatal.
"""
from __future__ import annotations

import hashlib
import linecache
from pathlib import Path

_registered: set[tuple[str, str]] = set()


def files_hash(paths, extra: bytes = b"") -> str:
    """sha256 (16 hex digits) over the bytes of ``paths`` (sorted by name) and ``extra``."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode() + p.read_bytes())
    h.update(extra)
    return h.hexdigest()[:16]


def fingerprint_kernel(fp: str):
    """A trivial ``@triton.jit`` function whose source text contains ``fp``."""
    import triton  # noqa: F401  (the stub's globals need it)
    src = ("import triton\n\n@triton.jit\ndef sfmp_codegen_fingerprint(x_ptr):\n"
           f"    \"\"\"sfmp_compile codegen fingerprint {fp}.\"\"\"\n    pass\n")
    filename = f"<sfmp_compile fingerprint {fp}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)  # for inspect.getsource
    scope: dict = {}
    exec(compile(src, filename, "exec"), scope)
    return scope["sfmp_codegen_fingerprint"]


def register(op_name: str, fp: str) -> None:
    """Register the stub carrying ``fp`` for ``op_name`` (once per (op, fingerprint))."""
    if (op_name, fp) in _registered:
        return
    try:
        from torch._library import triton as lib_triton
        lib_triton.triton_ops_to_kernels.setdefault(op_name, []).append(fingerprint_kernel(fp))
        _registered.add((op_name, fp))
    except Exception:  # noqa: BLE001 - no triton, or torch moved the private table
        pass


def register_kernel(op_name: str, kernel) -> None:
    """Register a generated kernel itself for ``op_name`` (its source is then part of the key)."""
    try:
        from torch._library import triton as lib_triton
        lib_triton.triton_ops_to_kernels.setdefault(op_name, []).append(kernel)
    except Exception:  # noqa: BLE001
        pass
