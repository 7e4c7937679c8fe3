"""Progress bars for the long steps (calibration passes, GPTQ, quantization, compile, scoring).

One helper, ``bar``, wraps tqdm so that library code stays quiet unless someone is watching:
bars go to stderr and are shown only when stderr is a terminal, unless ``SFMP_PROGRESS`` says
otherwise ("1" forces them on, e.g. for a log file; "0" turns them off), and never inside
``quiet()`` (the CLI's ``--quiet``). It sits beside ``config`` at the top of the package, so any
step may import it.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterable, Iterator

_quiet_depth = 0


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Inside this block (when ``enabled``), ``bar`` draws nothing, whatever the terminal or environment."""
    global _quiet_depth
    _quiet_depth += bool(enabled)
    try:
        yield
    finally:
        _quiet_depth -= bool(enabled)


def shown() -> bool:
    """Whether a bar made now would be drawn: not inside ``quiet()``, then ``SFMP_PROGRESS`` (1/0), then
    whether stderr is a terminal."""
    if _quiet_depth:
        return False
    env = os.environ.get("SFMP_PROGRESS", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm bar (rate and ETA when ``total`` or ``len(iterable)`` is known) on stderr, disabled when
    ``shown()`` is false. Use it as tqdm: iterate it, or ``with bar(total=n) as b: b.update(1)``."""
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=not shown(),
                leave=False, dynamic_ncols=True)
