"""Build and load the CPU kernels (``SOURCES``: cpu_kernel.cpp + cpu_loops.cpp, the autograd kernel,
attention_cpu.cpp) with the C++ compiler torch.compile already needs on CPU.

The shared object is cached under ``<cache>/cpu_kernel/<key>.so``; the key hashes the sources, the
torch version, the compiler, its flags and the CPU's instruction-set flags (the build targets this
CPU with ``-march=native``), so a changed input never loads a stale build. Builds run under a file
lock and land by atomic rename: concurrent processes build once, a killed build leaves nothing
half-written. Nothing is built at import: :func:`load` is called the first time a CPU layer needs
the kernel. Where no compiler works, :func:`load` returns False once, with one warning, and the
dispatcher falls back to the reference op.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import torch

# Every C++ source of the CPU ops, compiled into one shared object (one build, one cache key), and
# the headers they share (hashed into the key, not compiled on their own).
SOURCES = tuple(Path(__file__).with_name(f) for f in ("cpu_kernel.cpp", "cpu_loops.cpp", "cpu_autograd.cpp",
                                                     "attention_cpu.cpp"))
HEADERS = (Path(__file__).with_name("cpu_kernel.h"),)
HASHED = SOURCES + HEADERS  # what the build key and the AOT fingerprints read
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Where builds are kept: ``$SFMP_CACHE_DIR/cpu_kernel`` or ``~/.cache/sfmp_compile/cpu_kernel``."""
    root = os.environ.get("SFMP_CACHE_DIR") or Path.home() / ".cache" / "sfmp_compile"
    return Path(root) / "cpu_kernel"


def compiler() -> str | None:
    """The C++ compiler: ``$CXX``, else the first of g++ / c++ / clang++ on PATH."""
    env = os.environ.get("CXX")
    if env:
        return env
    return next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


def _cpu_flags() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return sys.platform


def _flags(native: bool) -> list[str]:
    from torch.utils.cpp_extension import include_paths
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return ["-fPIC", "-O3", "-std=c++20", "-fopenmp", *(["-march=native"] if native else []),
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-w", *(f"-I{p}" for p in include_paths()),
            f"-I{sysconfig.get_paths()['include']}"]


def _compile_commands(cxx: str, objects: list[Path], native: bool) -> list[list[str]]:
    """One ``-c`` command per source (run side by side: torch's autograd headers alone take a minute)."""
    return [[cxx, "-c", str(src), "-o", str(obj), *_flags(native)] for src, obj in zip(SOURCES, objects)]


def _link_command(cxx: str, objects: list[Path], out: Path) -> list[str]:
    from torch.utils.cpp_extension import library_paths
    lib = library_paths()[0]
    return [cxx, *map(str, objects), "-o", str(out), "-shared", "-fopenmp", f"-L{lib}", "-lc10", "-ltorch_cpu",
            f"-Wl,-rpath,{lib}"]


def _run_all(commands: list[list[str]]) -> None:
    """Run ``commands`` at once; the first failure's last stderr line is the error."""
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
    errors = [(p.communicate()[1], p.returncode) for p in procs]  # a blocked writer just waits its turn
    for err, code in errors:
        if code:
            raise RuntimeError(err.strip().splitlines()[-1] if err.strip() else f"exit {code}")


def _key(cxx: str, native: bool) -> str:
    h = hashlib.sha256()
    for part in (*(p.read_bytes() for p in HASHED), torch.__version__.encode(), cxx.encode(), str(native).encode(),
                 _cpu_flags().encode() if native else b""):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:20]


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _build(cxx: str, native: bool, rebuild: bool = False) -> Path:
    """The cached shared object for (compiler, native), compiled first if absent, damaged or ``rebuild``."""
    from filelock import FileLock
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    so = d / f"{_key(cxx, native)}.so"
    with FileLock(str(so) + ".lock"):
        if so.is_file() and _is_elf(so) and not rebuild:
            return so
        tmp = so.with_name(f"{so.stem}.{os.getpid()}.tmp.so")
        objects = [so.with_name(f"{so.stem}.{os.getpid()}.{i}.o") for i in range(len(SOURCES))]
        try:
            _run_all(_compile_commands(cxx, objects, native))
            _run_all([_link_command(cxx, objects, tmp)])
            os.replace(tmp, so)
        finally:
            for f in (tmp, *objects):
                f.unlink(missing_ok=True)
    return so


def load() -> bool:
    """Make ``torch.ops.sfmp.linear_cpu`` available (build if needed). True on success; False, with
    one warning per process, where it cannot be built here."""
    if "ok" in _state:
        return bool(_state["ok"])
    cxx = compiler()
    err = "no C++ compiler (set CXX)" if cxx is None else None
    for native in (True, False) if cxx else ():
        try:
            try:
                torch.ops.load_library(str(_build(cxx, native)))
            except OSError:  # a cached file that is an ELF but not a loadable one: build it again
                torch.ops.load_library(str(_build(cxx, native, rebuild=True)))
            _state["ok"] = True
            _state["native"] = native
            return True
        except (RuntimeError, OSError) as e:
            err = str(e)
    _state["ok"] = False
    warnings.warn(f"sfmp: the CPU kernel could not be built ({err}); CPU layers run the reference op", stacklevel=2)
    return False


def register_python_side(module_file: str, fakes: dict) -> bool:
    """Load the shared object (:func:`load`), then once per process give each op in ``fakes``
    ({"sfmp::name.overload": fake}) its fake kernel and its AOT cache fingerprint (the C++ sources
    plus ``module_file``, the Python side). True where the ops can run here."""
    if module_file in _state.setdefault("registered", set()):
        return True
    if not load():
        return False
    # A cached compiled graph calls an op by its schema at the time it was compiled; key those
    # graphs on the sources so an edited schema or body never replays stale code.
    from . import cache_key
    fp = cache_key.files_hash([*HASHED, Path(module_file)])
    for name, fake in fakes.items():
        torch.library.register_fake(name)(fake)
        cache_key.register(name, fp)
    _state["registered"].add(module_file)
    return True
