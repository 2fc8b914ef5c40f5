"""Ctrl-C handling for the `vqc` program from its first statement on (issue 21, finding 3).

`vqcodec/__init__.py` imports this module (standard library only) before anything heavy, so
that a Ctrl-C or SIGTERM while Pillow, numba or torch are being imported prints one line instead
of a KeyboardInterrupt traceback. It acts only when this process *is* the vqc program: the
console script (``sys.argv[0]`` named ``vqc``) or ``python -m vqcodec.cli``; a program that
imports vqcodec as a library keeps its own signal handlers.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["is_vqc_program", "install"]

#: What `python -m` is given to run the command-line tool.
CLI_MODULE = "vqcodec.cli"
#: Names of the console script (`[project.scripts]` in pyproject.toml).
SCRIPT_NAMES = ("vqc", "vqc.exe")


def _early_interrupt(signum: int, frame: object) -> None:  # pragma: no cover - runs in a child
    """Ctrl-C / SIGTERM before a command has started: one line, no traceback; nothing has been
    written yet, so nothing needs cleaning up. Exits 128 + the signal number (130, 143)."""
    try:
        os.write(2, b"vqc: interrupted\n")
    except OSError:
        pass
    os._exit(128 + signum)


def is_vqc_program() -> bool:
    """True when this process runs the vqc command-line tool (console script or ``python -m
    vqcodec.cli``), False when vqcodec is imported by another program.

    ``python -m`` is recognised from ``sys.orig_argv`` (Python >= 3.10): while the package is
    imported, ``sys.argv[0]`` is still ``"-m"``.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) in SCRIPT_NAMES:
        return True
    orig = list(getattr(sys, "orig_argv", ()))
    return any(a == "-m" and b == CLI_MODULE for a, b in zip(orig, orig[1:])) or f"-m{CLI_MODULE}" in orig


def install() -> bool:
    """Install the one-line handler for SIGINT and SIGTERM when `is_vqc_program()` and this is
    the main thread; returns whether it did. `vqcodec.cli` replaces it with the handler of a
    running command (`cli._interrupt_guard`)."""
    if not is_vqc_program():
        return False
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _early_interrupt)
    except ValueError:  # not the main thread
        return False
    return True
