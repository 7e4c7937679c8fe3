"""Emit, cache and load the specialised Triton kernels.

A kernel is identified by a :class:`KernelKey` = (family, width set). The width set (the distinct
bit widths a layer uses) is baked into the source as literal segment loops; tile shapes and feature
switches stay ``tl.constexpr`` so Triton compiles those variants from the same source. So the
number of generated sources is bounded by the families used x (distinct width sets in a model), typically
<= 3 x 7 for a (2,3,4) allocation, however many layers or exact block patterns there are.

Caches:
  * in memory: ``KernelKey -> JITFunction`` (and the source text);
  * on disk: the emitted source, ``<cache_dir>/kernels/<name>_<sha>.py``. It is imported from that
    file (Triton needs ``inspect.getsource``), which also makes it inspectable; the sha covers the
    text, so a template change never reuses a stale file. Compiled binaries are Triton's own cache.
``cache_dir()`` is ``$SFMP_CACHE_DIR`` or ``~/.cache/sfmp_compile``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from . import templates
from .families import FAMILIES

_lock = threading.Lock()
_kernels: dict["KernelKey", object] = {}
_sources: dict["KernelKey", str] = {}
_paths: dict["KernelKey", Path] = {}


@dataclass(frozen=True)
class KernelKey:
    """What a generated kernel is specialised on: its family and the SET of block bit widths."""

    family: str
    widths: tuple[int, ...]

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown kernel family {self.family!r}; expected one of {sorted(FAMILIES)}")
        w = tuple(sorted(set(int(b) for b in self.widths)))
        if not w or w[0] < 1 or w[-1] > 8:
            raise ValueError(f"widths must be a non-empty set within 1..8, got {self.widths!r}")
        object.__setattr__(self, "widths", w)

    @property
    def name(self) -> str:
        return f"sfmp_{self.family}_w{'_'.join(str(b) for b in self.widths)}"

    @classmethod
    def parse(cls, name: str) -> "KernelKey":
        """Inverse of :attr:`name`, e.g. ``"sfmp_decode_w2_3"``."""
        try:
            _, family, rest = name.split("_", 2)
            return cls(family, tuple(int(b) for b in rest[1:].split("_")))
        except (ValueError, IndexError):
            raise ValueError(f"not a kernel name: {name!r} (expected like 'sfmp_decode_w2_3')") from None


ALIGNED4 = 1  # width_mask bit 0: the layer's word offsets were checked to be multiples of 4 (launch.layout_aligned4)


def width_mask(widths, aligned4: bool = False) -> int:
    """Bit set of widths (bit b set <=> width b present): a hashable int for op signatures. Bit 0
    (``ALIGNED4``) carries a fact about the layer's layout that a traced graph cannot check itself:
    every block offset and row-block row count is a multiple of 4 words (gemvu: 128-bit loads)."""
    m = ALIGNED4 if aligned4 else 0
    for b in widths:
        m |= 1 << int(b)
    return m


def widths_of_mask(mask: int) -> tuple[int, ...]:
    return tuple(b for b in range(1, 9) if mask >> b & 1)


def cache_dir() -> Path:
    d = os.environ.get("SFMP_CACHE_DIR")
    return Path(d) if d else Path.home() / ".cache" / "sfmp_compile"


def emit_source(key: KernelKey) -> str:
    """The full Python/Triton source of the kernel for ``key`` (deterministic text)."""
    fam = FAMILIES[key.family]
    sig = templates.SIGNATURE.format(name=key.name, family=key.family, widths=key.widths)
    if fam.SIGNATURE_EXTRA:
        cut = sig.index("\n):\n")
        sig = sig[:cut + 1] + fam.SIGNATURE_EXTRA + sig[cut + 1:]
    return (templates.HEADER.format(family=key.family, widths=key.widths, version=fam.VERSION)
            + sig + fam.emit_body(key.widths))


def _as_key(key) -> KernelKey:
    return key if isinstance(key, KernelKey) else KernelKey.parse(str(key))


def kernel_source(key) -> str:
    """Source text of a kernel (a :class:`KernelKey` or its name), for graph dumps and debugging."""
    key = _as_key(key)
    src = _sources.get(key)
    return src if src is not None else emit_source(key)


def kernel_path(key) -> Path | None:
    """Where the emitted source of a loaded kernel lives on disk (None until it is loaded)."""
    return _paths.get(_as_key(key))


def get_kernel(key):
    """The ``@triton.jit`` kernel for ``key``: generated, written to the cache dir and imported once.

    Whether it is a compiled or an interpreted kernel is decided by Triton when the emitted module
    is imported (``TRITON_INTERPRET`` at that time, and at ``import triton``).
    """
    key = mkey = _as_key(key)
    k = _kernels.get(mkey)
    if k is not None:
        return k
    with _lock:
        k = _kernels.get(mkey)
        if k is not None:
            return k
        src = emit_source(key)
        sha = hashlib.sha256(src.encode()).hexdigest()[:12]
        path = _source_file(_kernel_dir(), f"{key.name}_{sha}", src)
        modname = f"sfmp_compile_generated.{key.name}_{sha}"
        spec = importlib.util.spec_from_file_location(modname, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
        k = getattr(mod, key.name)
        _sources[mkey], _paths[mkey], _kernels[mkey] = src, path, k
        for cb in _on_load:
            cb(key, k)
        return k


_fallback_dir: Path | None = None


def _kernel_dir() -> Path:
    """``<cache_dir>/kernels``, created; when it cannot be (a file holds the name, no permission), a
    private temporary directory for this process, with a warning: a broken cache costs a re-emit,
    never a failed launch."""
    global _fallback_dir
    d = cache_dir() / "kernels"
    try:
        d.mkdir(parents=True, exist_ok=True)
        if d.is_dir():
            return d
    except OSError:
        pass
    if _fallback_dir is None:
        import tempfile
        import warnings
        _fallback_dir = Path(tempfile.mkdtemp(prefix="sfmp-kernels-"))
        warnings.warn(f"sfmp kernel cache {d} is not a usable directory; kernel sources go to {_fallback_dir} "
                      "for this process", stacklevel=3)
    return _fallback_dir


def _source_file(d: Path, stem: str, src: str) -> Path:
    """A regular file in ``d`` holding exactly ``src``, to import the kernel from: the cached file
    when its bytes are ``src``; else it is (re)written, atomically, so a corrupt or stale entry heals.
    Something that is not a regular file squatting on the name (a directory, a FIFO) is left alone
    and the next free name ``<stem>.<i>.py`` is used: nothing unchecked is ever executed."""
    want = src.encode()
    for i in range(100):
        path = d / (f"{stem}.py" if i == 0 else f"{stem}.{i}.py")
        if path.is_file():
            try:
                if path.read_bytes() == want:
                    return path
            except OSError:
                continue
        elif path.exists() or path.is_symlink():
            continue
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(want)
        os.replace(tmp, path)  # atomic: concurrent processes never see a half-written file
        return path
    raise OSError(f"no usable file name for kernel {stem} in {d}")


def distinct_kernels() -> int:
    """Number of distinct generated kernel sources loaded in this process ((family, width set) keys).

    Each may be compiled by Triton into several binaries (one per tile config / dtype / constexpr
    combination); those are counted by :func:`loaded_keys` users via Triton's cache, not here.
    """
    return len(_kernels)


def loaded_keys() -> list[KernelKey]:
    return sorted(_kernels, key=lambda k: k.name)


_on_load: list = []


def on_kernel_load(callback) -> None:
    """Call ``callback(key, kernel)`` for every kernel loaded from now on (and those already loaded)."""
    _on_load.append(callback)
    for k, v in list(_kernels.items()):
        callback(k, v)
