"""The `vqc` command-line tool: compress images to `.vqc`, decompress them to PNG, inspect files.

    vqc compress photo.png                 -> photo.vqc (next to the input)
    vqc compress a.png b.jpg -o outdir/    -> outdir/a.vqc, outdir/b.vqc
    vqc decompress photo.vqc               -> photo.png
    vqc info photo.vqc                     -> header fields, sizes, bpp
    vqc compress - -o - < a.png > a.vqc    ('-' is stdin as an input, stdout as an output)

This module is deliberately thin: the work is done by `vqcodec.codec.compress` /
`vqcodec.codec.decompress`, `vqcodec.images.save_png` and `vqcodec.container.read`. What lives here
is what a command-line tool owes its user:

* outputs are never overwritten without ``--force``, never equal to their input, and are written
  to a temporary file in the output's directory that is renamed into place (``os.replace``) only
  when complete, so a crash or Ctrl-C never leaves a partial output;
* every error is one line ``vqc: error: <input>: <message>`` on stderr and a documented exit code
  (`EXIT_CODES`); with several inputs the others are still processed and the exit code is the
  first non-zero one;
* when an output is stdout, nothing but that output goes to stdout (summaries, progress and errors
  go to stderr).
"""

from __future__ import annotations

import os
import signal
import sys

from vqcodec import _early

#: Standard file descriptors (0, 1, 2) that were closed when vqc started (`>&-`, `<&-`). They are
#: pointed at /dev/null (`_guard_std_fds`) so that no file vqc opens can land on them, and a
#: command that needs one of them fails with one clear line.
_CLOSED_STD_FDS: set[int] = set()


def _usable_std_fd(fd: int) -> bool:
    """True when fd is open for reading (0) / writing (1, 2). A launcher script may leave a
    closed descriptor's number to a read-only file of its own (pyenv's shims do)."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    try:
        import fcntl

        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except (ImportError, OSError):  # pragma: no cover - Windows
        return True
    return access != (os.O_WRONLY if fd == 0 else os.O_RDONLY)


def _guard_std_fds() -> None:
    """Record closed standard descriptors and park /dev/null on them (first thing the program
    does: any file opened before would take a closed descriptor's number)."""
    for fd in (0, 1, 2):
        if not _usable_std_fd(fd):
            _CLOSED_STD_FDS.add(fd)
            try:
                null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
            except OSError:
                pass
    if 2 in _CLOSED_STD_FDS and sys.stderr is None:  # Python found fd 2 closed at start-up
        sys.stderr = open(os.devnull, "w")


# Only when this process *is* the vqc program (console script or python -m), not when imported.
# The one-line Ctrl-C handler is already in place: `vqcodec/__init__.py` installs it first.
if __name__ == "__main__" or _early.is_vqc_program():
    _guard_std_fds()

import contextlib  # noqa: E402 - after the early signal handlers, on purpose
import enum  # noqa: E402
import errno  # noqa: E402
import io as _pyio  # noqa: E402
import logging  # noqa: E402
import secrets  # noqa: E402
import stat  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import BinaryIO, Optional  # noqa: E402

import typer  # noqa: E402

from vqcodec import __version__, container  # noqa: E402
from vqcodec.constants import DEFAULT_EFFORT, DEFAULT_QUALITY, MAX_PIXELS  # noqa: E402
from vqcodec.errors import (  # noqa: E402
    VqcError,
    VqcFormatError,
    VqcImageError,
    VqcLimitError,
    VqcModelError,
)

__all__ = ["app", "main", "compress", "decompress", "info", "describe", "Device", "EXIT_CODES"]

# ------------------------------------------------------------------------------------ exit codes

EXIT_OK = 0
EXIT_ERROR = VqcError.exit_code  # 1
EXIT_USAGE = 2  # click/typer's code for usage errors
EXIT_FORMAT = VqcFormatError.exit_code  # 3
EXIT_IMAGE = VqcImageError.exit_code  # 4
EXIT_MODEL = VqcModelError.exit_code  # 5
EXIT_LIMIT = VqcLimitError.exit_code  # 6
EXIT_EXISTS = 7
EXIT_IO = 8
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM

#: Every exit status `vqc` can return, with its meaning (also shown by ``vqc --help``).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_ERROR: "other vqc error",
    EXIT_USAGE: "usage error (bad option or argument)",
    EXIT_FORMAT: "malformed or corrupted .vqc file",
    EXIT_IMAGE: "input image unreadable or unsupported",
    EXIT_MODEL: "model unknown, missing or failing its hash check; device unavailable",
    EXIT_LIMIT: "resource limit hit (e.g. image above --max-pixels)",
    EXIT_EXISTS: "output exists (use --force) or would overwrite the input",
    EXIT_IO: "I/O error reading an input or writing an output",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_TERMINATED: "terminated (SIGTERM); like Ctrl-C, no partial output is left",
}

STDIO = "-"
_STDIN_NAME = "<stdin>"
_STDOUT_NAME = "<stdout>"

#: Bytes read from a stream (stdin, FIFO, device) to identify an image before reading the rest.
SNIFF_BYTES = 1 << 20
#: Bytes read at a time from a .vqc input after its header.
READ_BLOCK = 1 << 20
#: Longest file name most file systems take (bytes); temporary names must fit too.
NAME_MAX = 255


def _epilog() -> str:
    # typer's rich help keeps single line breaks of an epilog.
    lines = ["Exit codes:"] + [f"{code:>3}  {meaning}" for code, meaning in EXIT_CODES.items()]
    return "\n".join(lines)


app = typer.Typer(
    name="vqc",
    help="vqc: a learned lossy image codec (VQ-VAE + integer PixelCNN prior + range coding).",
    epilog=_epilog(),
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
)


class Device(str, enum.Enum):
    """Where the networks run: ``auto`` picks CUDA when a GPU is present."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# ------------------------------------------------------------------------------------- errors


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so the same clean-up runs."""


class _CliError(Exception):
    """An error for one input that the CLI itself detects (exists, same file, I/O)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _os_reason(exc: OSError) -> str:
    """A short reason for an OSError, without Python's '[Errno n]' decoration."""
    return exc.strerror or str(exc) or type(exc).__name__


# ------------------------------------------------------------------------------------ plumbing


@dataclass(frozen=True)
class _Job:
    """One input and where its output goes (``STDIO`` for stdin / stdout)."""

    src: str
    dst: str

    @property
    def src_name(self) -> str:
        return _STDIN_NAME if self.src == STDIO else self.src

    @property
    def dst_name(self) -> str:
        return _STDOUT_NAME if self.dst == STDIO else self.dst


def _usage(message: str, param_hint: str) -> typer.BadParameter:
    """A usage error (exit 2, printed by typer with the usage line)."""
    return typer.BadParameter(message, param_hint=param_hint)


def _plan(inputs: Sequence[str], output: Optional[str], suffix: str) -> list[_Job]:
    """Pair each input with its output path; usage errors (exit 2) for impossible combinations.

    Default: ``<stem><suffix>`` next to the input (stdout for stdin). ``-o`` may be a file path or
    ``-`` with one input, or an existing directory (any number of inputs).
    """
    if STDIO in inputs and len(inputs) > 1:
        raise _usage("'-' (stdin) can only be used as the only input", "INPUTS")
    out_dir: Optional[Path] = None
    if output is not None and output != STDIO and Path(output).is_dir():
        out_dir = Path(output)
    elif output is not None and output.endswith(("/", os.sep)):
        raise _usage(f"directory {output!r} does not exist", "'-o' / '--output'")
    elif output is not None and len(inputs) > 1:
        raise _usage(f"with several inputs, it must be an existing directory, got {output!r}",
                     "'-o' / '--output'")
    jobs = []
    for src in inputs:
        if src == STDIO:
            if out_dir is not None:
                raise _usage("stdin has no file name: give -o FILE or -o - for it",
                             "'-o' / '--output'")
            dst = output if output is not None else STDIO
        elif out_dir is not None:
            dst = str(out_dir / (Path(src).stem + suffix))
        elif output is not None:
            dst = output
        else:
            dst = str(Path(src).with_name(Path(src).stem + suffix))
        jobs.append(_Job(src, dst))
    if any(j.dst == STDIO for j in jobs) and _stdout_is_tty():
        raise _usage("refusing to write binary data to a terminal; redirect stdout or use -o FILE",
                     "'-o' / '--output'")
    return jobs


def _stdout_is_tty() -> bool:
    try:
        return os.isatty(1) and 1 not in _CLOSED_STD_FDS
    except OSError:
        return False


def _std_stream(fd: int) -> BinaryIO:
    """The binary stdin (fd 0) or stdout (fd 1); _CliError (exit 8) when it was closed."""
    name, what = (_STDIN_NAME, "read") if fd == 0 else (_STDOUT_NAME, "write")
    if fd in _CLOSED_STD_FDS:
        raise _CliError(f"cannot {what} {name}: the stream is closed", EXIT_IO)
    text = sys.stdin if fd == 0 else sys.stdout
    stream = getattr(text, "buffer", None)
    if stream is None:  # replaced by a test runner or an embedding program
        try:
            stream = typer.get_binary_stream("stdin" if fd == 0 else "stdout")
        except Exception:  # noqa: BLE001 - click raises RuntimeError when there is none
            raise _CliError(f"cannot {what} {name}: the stream is not available", EXIT_IO) from None
    return stream


def _same_file(a: str, b: str) -> bool:
    """True when paths a and b name the same file (existing or not)."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _check_output(job: _Job, force: bool, written: set[str]) -> None:
    """Refuse (exit 7) an output equal to the input, written earlier in this run, or existing
    without ``--force`` (whatever it is: file, symbolic link, FIFO, device). Done before any
    work so that no time is spent on a doomed file."""
    if job.dst == STDIO:
        _std_stream(1)  # exit 8 now, before any work, when stdout is closed
        return
    if job.src != STDIO and _same_file(job.src, job.dst):
        raise _CliError(f"output {job.dst} is the input file; refusing to overwrite it", EXIT_EXISTS)
    if os.path.realpath(job.dst) in written:
        raise _CliError(f"output {job.dst} was already written by an earlier input of this run",
                        EXIT_EXISTS)
    if not force and os.path.lexists(job.dst):
        raise _exists(job.dst)


def _exists(dst: object) -> _CliError:
    """The 'already exists' error (exit 7)."""
    return _CliError(f"output {dst} already exists (use --force to overwrite)", EXIT_EXISTS)


def _open_input(job: _Job) -> tuple[BinaryIO, bool]:
    """(binary file object, is a regular file) for the job's input; OSError -> exit 8."""
    if job.src == STDIO:
        return _std_stream(0), False
    try:
        fh = open(job.src, "rb")
        return fh, stat.S_ISREG(os.fstat(fh.fileno()).st_mode)
    except OSError as exc:
        raise _CliError(f"cannot read input: {_os_reason(exc)}", EXIT_IO) from None


def _read_upto(fh: BinaryIO, n: int) -> bytes:
    """At most n bytes from fh (fewer only at end of input); OSError -> exit 8."""
    try:
        return fh.read(n)
    except OSError as exc:
        raise _CliError(f"cannot read input: {_os_reason(exc)}", EXIT_IO) from None


def _read_vqc_input(job: _Job, max_pixels: int) -> bytes | bytearray:
    """The bytes of a .vqc input, read no further than its header allows.

    The first `container.HEADER_MAX_BYTES` are read and the header is parsed from them
    (`container.read_header_prefix`): a bad magic or header fails there, before anything else
    is read.
    The rest is bounded by `container.max_file_bytes` of the image the header claims (at most
    `max_pixels` pixels): a larger regular file is refused from its size without reading it, a
    stream is read no further than that. Input that does not start with the magic is returned
    as is (the container reader names the problem).

    Raises:
        VqcFormatError: the header is malformed.
        VqcLimitError: the input is larger than a .vqc file of its image can be.
        _CliError: exit 8, the input cannot be read.
    """
    fh, regular = _open_input(job)
    try:
        head = _read_exactly(fh, container.HEADER_MAX_BYTES)
        if not head.startswith(container.MAGIC):
            return head
        limit, what = _vqc_byte_limit(container.read_header_prefix(head, max_pixels=None)[0], max_pixels)
        size = os.fstat(fh.fileno()).st_size if regular else 0
        if size > limit:
            raise VqcLimitError(f"file is {size:,} bytes, more than {what} can be ({limit:,} bytes)")
        data = _read_rest(fh, head, limit)
        if len(data) > limit:
            raise VqcLimitError(f"input is more than {limit:,} bytes, more than {what} can be")
        return data
    finally:
        if job.src != STDIO:
            fh.close()


def _vqc_byte_limit(header: container.Header, max_pixels: int) -> tuple[int, str]:
    """(most bytes a .vqc file with this header can have, what that is in words): the bound of
    `container.max_file_bytes` for the header's image, or for `max_pixels` if that is less."""
    pixels = header.width * header.height
    if pixels > max_pixels:
        return container.max_file_bytes(max_pixels), "a .vqc file within the pixel limit"
    return container.max_file_bytes(pixels), f"a .vqc file of a {header.width}x{header.height} image"


def _read_exactly(fh: BinaryIO, n: int) -> bytes:
    """n bytes from fh, fewer only at end of input (a pipe may return short reads)."""
    parts, got = [], 0
    while got < n:
        part = _read_upto(fh, n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _read_rest(fh: BinaryIO, head: bytes, limit: int) -> bytearray:
    """head + the rest of fh, at most limit + 1 bytes in all, in one growing buffer (no copy of
    the whole: a 500 MB input costs 500 MB, not twice that)."""
    data = bytearray(head)
    while len(data) <= limit:
        part = _read_upto(fh, min(READ_BLOCK, limit + 1 - len(data)))
        if not part:
            break
        data += part
    return data


def _image_input(job: _Job, max_pixels: int = MAX_PIXELS) -> tuple[object, int]:
    """(source for codec.compress, bytes in the input) without reading more than needed: a
    regular file goes to Pillow as an open file (Pillow reads what it needs); a stream (stdin,
    FIFO, device) is identified from its first SNIFF_BYTES before the rest is read, up to what
    an image of that size can hold."""
    from vqcodec import images as vio

    fh, regular = _open_input(job)
    if regular:  # fh.name is the path, named in the codec's error messages
        return fh, os.fstat(fh.fileno()).st_size
    try:
        data = _read_upto(fh, SNIFF_BYTES)
        if len(data) == SNIFF_BYTES:  # more may follow: identify it before reading on
            limit = vio.stream_byte_limit(data, job.src_name, max_pixels)
            data += _read_upto(fh, limit - len(data) + 1)
            if len(data) > limit:
                raise VqcLimitError(f"input is more than {limit:,} bytes, more than an image of "
                                    "its size can be")
    finally:
        if job.src != STDIO:
            fh.close()
    src = _pyio.BytesIO(data)
    src.name = job.src_name  # named in the codec's error messages
    return src, len(data)


def _write_output(job: _Job, write: Callable[[BinaryIO], None], force: bool) -> int:
    """Write an output with `write(fileobj)`; returns the number of bytes written.

    Decided on what the output path is *now* (``os.lstat``, symbolic links not followed):

    * stdout (``-``): the bytes are produced in memory, then written.
    * nothing there, or a regular file (``force``): `_write_via_temp`: a temporary file next to
      it, renamed over it when complete, so the destination is either untouched or complete.
    * a symbolic link (``force``): replaced by the new file like a regular file; its target is
      never written. A link to a FIFO or device is refused (use ``-o -`` for stdout).
    * a FIFO or character device (``force``): written in place, never replaced
      (`_write_special`).
    * anything else (directory, socket, block device): refused, exit 7.

    Without ``force`` an existing output was refused by `_check_output`; one that appears
    meanwhile is never replaced (`_commit`).

    Raises:
        _CliError: exit 7 (exists, not a file vqc writes) or 8 (I/O error).
    """
    if job.dst == STDIO:
        return _write_stdout(job, write)
    dst = Path(job.dst)
    try:
        st: Optional[os.stat_result] = os.lstat(dst)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _CliError(f"cannot write {job.dst}: {_os_reason(exc)}", EXIT_IO) from None
    if st is None or stat.S_ISREG(st.st_mode):
        keep_mode = None if st is None or not force else _kept_mode(st.st_mode)
        return _write_via_temp(job, dst, write, force, keep_mode)
    if not force:  # it appeared after _check_output
        raise _exists(job.dst)
    if stat.S_ISLNK(st.st_mode):
        _check_link_target(job)
        return _write_via_temp(job, dst, write, force, None)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return _write_special(job, write, dst)
    raise _CliError(f"output {job.dst} is not a regular file; refusing to replace it", EXIT_EXISTS)


def _kept_mode(mode: int) -> int:
    """The permission bits a replaced file passes on to its successor: rwx for user, group and
    others, less others-write; never setuid, setgid or sticky (issue 21)."""
    return stat.S_IMODE(mode) & 0o775


def _check_link_target(job: _Job) -> None:
    """Refuse (exit 7) a symbolic link output that points at anything but a regular file or
    nothing: it is replaced, never followed, and a link to a FIFO or device (/dev/stdout) is
    almost certainly meant to be written through, which vqc does not do."""
    try:
        mode = os.stat(job.dst).st_mode
    except OSError:  # dangling (or unreadable) link: replacing the link itself is safe
        return
    if not stat.S_ISREG(mode):
        raise _CliError(f"output {job.dst} is a symbolic link to something other than a regular "
                        "file; refusing to follow or replace it (use -o - for stdout)", EXIT_EXISTS)


def _render(write: Callable[[BinaryIO], None]) -> bytes:
    """The bytes `write` produces, in memory."""
    buf = _pyio.BytesIO()
    write(buf)
    return buf.getvalue()


def _write_stdout(job: _Job, write: Callable[[BinaryIO], None]) -> int:
    """Write to stdout; exit 8 (and stdout silenced) when it fails, e.g. a closed pipe."""
    data = _render(write)
    try:
        out = _std_stream(1)
        out.write(data)
        out.flush()
    except OSError as exc:
        _silence_stdout()
        raise _CliError(f"cannot write {job.dst_name}: {_os_reason(exc)}", EXIT_IO) from None
    return len(data)


#: How long `_open_special` waits for a reader of a FIFO output before giving up (seconds).
FIFO_WAIT_S = 2.0
_FIFO_POLL_S = 0.05


def _write_special(job: _Job, write: Callable[[BinaryIO], None], dst: Path) -> int:
    """Write into an existing FIFO or character device in place (``--force``), never replacing
    it: the bytes are produced in memory, then written to what `_open_special` opened."""
    data = _render(write)
    fd = _open_special(job, dst)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise _CliError(f"cannot write {job.dst}: {_os_reason(exc)}", EXIT_IO) from None
    finally:
        os.close(fd)
    return len(data)


def _open_special(job: _Job, dst: Path) -> int:
    """Open an existing FIFO or character device for writing and return the descriptor
    (blocking mode, so writes wait for a slow reader).

    Opened with O_NOFOLLOW | O_NONBLOCK and judged by ``fstat`` of what was opened, never by a
    separate ``stat``: a path swapped for a symbolic link meanwhile fails (ELOOP), one swapped
    for a regular file is refused unwritten (no O_CREAT, no O_TRUNC), and a FIFO with no reader
    is retried for FIFO_WAIT_S seconds (ENXIO), then an error instead of a hang.

    Raises:
        _CliError: exit 8 (no reader, I/O error) or 7 (no longer a FIFO or device).
    """
    flags = (os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    deadline = time.monotonic() + FIFO_WAIT_S
    while True:
        try:
            fd = os.open(dst, flags)
            break
        except OSError as exc:
            if exc.errno == errno.ENXIO and time.monotonic() < deadline:
                time.sleep(_FIFO_POLL_S)
                continue
            reason = (f"no process is reading the FIFO (waited {FIFO_WAIT_S:g} s)"
                      if exc.errno == errno.ENXIO else
                      "it was replaced by a symbolic link" if exc.errno == errno.ELOOP else
                      _os_reason(exc))
            raise _CliError(f"cannot write {job.dst}: {reason}", EXIT_IO) from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            raise _CliError(f"output {job.dst} changed while vqc was working; it was not written",
                            EXIT_EXISTS)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _temp_path(dst: Path) -> Path:
    """A fresh hidden temporary name next to dst that fits NAME_MAX (shortened if needed)."""
    token = secrets.token_hex(4)
    name = f".{dst.name}.{token}.tmp"
    if len(os.fsencode(name)) > NAME_MAX:
        name = f".vqc-{token}.tmp"
    return dst.with_name(name)


#: Signals that arrived inside a `_signals_deferred` block (raised when it ends).
_DEFERRED: list[int] = []
_CRITICAL = [0]  # depth of nested `_signals_deferred` blocks


def _raise_for_signal(signum: int) -> None:
    raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum: int, frame: object) -> None:
    """SIGINT / SIGTERM handler of a running command: KeyboardInterrupt (or _Terminated) now,
    or at the end of the current `_signals_deferred` block. Python runs signal handlers in the
    main thread between bytecodes, whichever thread the OS delivered the signal to."""
    if _CRITICAL[0]:
        _DEFERRED.append(signum)
        return
    _raise_for_signal(signum)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM for a few statements that must not be split (create a temporary
    file and record its name), then deliver the first one that arrived."""
    _CRITICAL[0] += 1
    try:
        yield
    finally:
        _CRITICAL[0] -= 1
        if not _CRITICAL[0] and _DEFERRED:
            signum = _DEFERRED[0]
            _DEFERRED.clear()
            _raise_for_signal(signum)


def _write_via_temp(job: _Job, dst: Path, write: Callable[[BinaryIO], None], force: bool,
                    mode: Optional[int]) -> int:
    """The temporary-file-then-rename write of `_write_output`.

    The temporary file is created with O_EXCL (never an existing file or link) in dst's
    directory; `mode` (permission bits to keep, see `_kept_mode`; None: the umask's default) is
    set on its descriptor (``fchmod``), never by path. Returns the bytes written.
    """
    tmp: Optional[Path] = None
    try:
        flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
        while tmp is None:
            candidate = _temp_path(dst)
            try:
                with _signals_deferred():  # no signal between creating and recording the file
                    fd = os.open(candidate, flags, 0o666)
                    tmp = candidate
            except FileExistsError:  # pragma: no cover - a 32-bit random name collision
                continue
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:  # on the descriptor: a path may be swapped for a link
                os.fchmod(fh.fileno(), mode)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
            size = os.fstat(fh.fileno()).st_size
        _commit(tmp, dst, force)
        tmp = None
        return size
    except OSError as exc:
        raise _CliError(f"cannot write {job.dst}: {_os_reason(exc)}", EXIT_IO) from None
    finally:
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass


def _commit(tmp: Path, dst: Path, force: bool) -> None:
    """Move the finished temporary file onto `dst` (replacing it only when `force`)."""
    if force:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)  # atomic "create if absent"
    except FileExistsError:
        raise _exists(dst) from None
    except OSError:  # file system without hard links: check, then rename
        if os.path.lexists(dst):
            raise _exists(dst) from None
        os.replace(tmp, dst)
        return
    tmp.unlink()


def _silence_stdout() -> None:
    """After a broken pipe on stdout, point fd 1 at /dev/null so the exit flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, _pyio.UnsupportedOperation):
        pass


def _quiet_libraries() -> None:
    """Keep Pillow's debug logging and warnings out of the user's terminal."""
    logging.getLogger("PIL").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"PIL(\.|$)")


class _Stderr:
    """Plain lines on stderr, as a rich Console with markup, highlighting and emoji off would
    print them; rich itself is imported only for a progress bar (`_rich_console`)."""

    @property
    def is_terminal(self) -> bool:
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False

    def print(self, text: str, **kwargs: object) -> None:
        try:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or gone: nowhere to say it
            pass


def _stderr_console() -> _Stderr:
    return _Stderr()


def _rich_console():
    """A rich Console on stderr, for a progress bar and the lines printed above it."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def _say(console, text: str) -> None:
    """One plain line on stderr (no markup interpretation: file names may contain '['); control
    characters in it (a newline in a file name) are escaped by `one_line`."""
    console.print(one_line(text), markup=False, highlight=False, soft_wrap=True)


def _escape_table() -> dict[int, str]:
    """str.translate table for `one_line`: C0 and C1 controls, DEL and the Unicode line and
    paragraph separators as Python's repr writes them (\\n, \\x1b, \\u2028), and the
    surrogates that stand for undecodable bytes of a file name (os.fsdecode) as \\xNN."""
    table = {cp: repr(chr(cp))[1:-1] for cp in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}
    table.update({cp: f"\\x{cp - 0xDC00:02x}" for cp in range(0xDC80, 0xDD00)})
    return table


_ESCAPES = _escape_table()


def one_line(text: str) -> str:
    """`text` with every character that could break or garble a one-line message escaped:
    ``"a\\nb.png"`` becomes ``"a\\\\nb.png"`` (a backslash and an n). Used for every line vqc
    prints that may hold a user's path or name.

    Args:
        text: any str (file names may hold any character but '/' and NUL).

    Returns:
        The text with no line breaks or other control characters; printable text unchanged.
    """
    return text.translate(_ESCAPES)


def _fmt_bytes(n: int) -> str:
    return f"{n:,} bytes"


def _run_jobs(jobs: list[_Job], verb: str, work: Callable[[_Job], str], *,
              progress_bar: bool = True) -> int:
    """Run `work` on each job with a progress bar (several inputs, stderr a terminal) and report
    each result (unless empty) or error as one line on stderr. Returns the first non-zero exit code (or 0);
    Ctrl-C propagates (see `_interrupt_guard`); outputs already completed stay."""
    console = _stderr_console()
    first_error = EXIT_OK
    show_bar = progress_bar and len(jobs) > 1 and console.is_terminal
    if show_bar:
        console = _rich_console()
        progress = _progress(console)
    else:
        progress = _NoProgress()
    with progress:
        task = progress.add_task(verb, total=len(jobs))
        for job in jobs:
            progress.update(task, description=one_line(f"{verb} {job.src_name}"))
            try:
                summary = work(job)
            except (VqcError, _CliError) as exc:
                _say(console, f"vqc: error: {job.src_name}: {exc}")
                first_error = first_error or _exit_code(exc)
            else:
                if summary:
                    _say(console, summary)
            progress.advance(task)
    return first_error


class _NoProgress(contextlib.nullcontext):
    """What `_run_jobs` uses instead of a progress bar when none is shown (rich.progress is not
    even imported then)."""

    def add_task(self, *args: object, **kwargs: object) -> int:
        return 0

    def update(self, *args: object, **kwargs: object) -> None:
        pass

    def advance(self, *args: object, **kwargs: object) -> None:
        pass


def _progress(console):
    """A transient rich progress bar on `console` (several inputs, stderr a terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True,
    )


def _exit_code(exc: Exception) -> int:
    """The exit code of a VqcError subclass or _CliError (never 0)."""
    return getattr(exc, "exit_code", EXIT_ERROR) or EXIT_ERROR


@contextlib.contextmanager
def _interrupt_guard() -> Iterator[None]:
    """Turn Ctrl-C into 'vqc: interrupted' on stderr and exit 130, SIGTERM into the same line
    and exit 143 (no traceback). Temporary files are removed by `_write_output` on the way out.
    Outside the main thread (an embedding program) signal handlers are left alone."""
    saved = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, _on_signal)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    except KeyboardInterrupt as exc:
        _say(_stderr_console(), "vqc: interrupted")
        code = EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
        raise typer.Exit(code) from None
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _check_device(device: Device) -> str:
    """Fail once, up front, when --device cuda is asked for without a GPU (exit 5)."""
    from vqcodec import zoo

    try:
        zoo.resolve_device(device.value)
    except VqcError as exc:
        _say(_stderr_console(), f"vqc: error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    return device.value


# ------------------------------------------------------------------------------------ commands


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vqc {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """vqc: a learned lossy image codec (VQ-VAE + integer PixelCNN prior + range coding).

    \f
    The typer callback run before every command (the text above the form feed is the help
    typer shows): parks /dev/null on closed standard descriptors and quiets Pillow's logging.

    Args:
        version: ``--version``: print "vqc <version>" and exit 0 (handled eagerly by
            `_version_callback`).
    """
    _guard_std_fds()
    _quiet_libraries()


_FORCE = typer.Option(False, "--force", "-f", help="Overwrite existing output files.")
_DEVICE = typer.Option(Device.auto, "--device", case_sensitive=False,
                       help="Run on cpu, cuda, or auto (cuda when available).")
_DECODE_DEVICE = typer.Option(
    Device.auto, "--device", case_sensitive=False,
    help="auto or cpu: the native decoder (libvqc) when found, else torch (auto: on a GPU when "
         "available); cuda: torch on the GPU. Same pixels either way; VQC_NATIVE=0: never the "
         "native decoder, VQC_NATIVE=1: always.")


@app.command()
def compress(
    inputs: list[str] = typer.Argument(...,
                                       help="Images to compress ('-' reads stdin)."),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", metavar="OUT",
        help="Output file ('-' = stdout) for one input, or an existing directory. "
             "Default: <stem>.vqc next to each input."),
    quality: Optional[float] = typer.Option(
        None, "--quality", "-q", min=0, max=100,
        help=f"Quality 0..100 (any number; default {DEFAULT_QUALITY:g}). Higher: bigger, better."),
    target_bpp: Optional[float] = typer.Option(
        None, "--target-bpp", metavar="BPP",
        help="Instead of --quality: the highest quality whose file has at most BPP bits per pixel."),
    size: Optional[str] = typer.Option(
        None, "--size", metavar="BYTES",
        help="Instead of --quality: the highest quality whose file fits in BYTES "
             "(e.g. 30000, 30k = 30*1024, 1.5m)."),
    effort: int = typer.Option(
        DEFAULT_EFFORT, "--effort", min=0, max=9,
        help="Encoder effort 0..9: more searches more index choices (0 = nearest neighbour)."),
    device: Device = _DEVICE,
    force: bool = _FORCE,
    model: Optional[str] = typer.Option(None, "--model",
                                        help="Use this model instead of --quality's (e.g. vqc-f4k512-v1)."),
    scale: Optional[float] = typer.Option(
        None, "--scale", metavar="S",
        help="Code the image downscaled by S (0.125 <= S <= 1) per side; decoders upsample it back to "
             "the full size with the format's filter. An encoder choice, like cwebp's -resize. "
             "Default: the scale --quality picks."),
    max_pixels: int = typer.Option(MAX_PIXELS, "--max-pixels", min=1,
                                   help="Refuse images with more pixels than this (checked from "
                                        "the header, before decoding)."),
    stages: Optional[int] = typer.Option(
        None, "--stages", metavar="S",
        help="With a multi-stage model (arch rvq, --model): code S stages of indices per position "
             "(1..the model's stages; default all). The rate control of such a model: more "
             "stages, more bits and quality. Not with --quality, --target-bpp or --size."),
) -> None:
    """Compress images (PNG, JPEG, WebP, ...) to .vqc files.\f

    Each input goes through `vqcodec.codec.compress`; the output is written to a temporary file
    and renamed into place.  Options are as the --help text says; `quality` None means
    DEFAULT_QUALITY, `size` is parsed by `_parse_size` ("30k" = 30 * 1024 bytes).

    Raises:
        typer.BadParameter: a usage error (exit 2): more than one of --quality, --target-bpp,
            --size, a NaN quality, a target bpp not > 0, a bad size, a scale outside [0.125, 1],
            impossible -o, --stages below 1, --stages with --quality / --target-bpp / --size or
            without --model.
        typer.Exit: always, with the first non-zero exit code of the inputs (`EXIT_CODES`),
            or 0; 130 / 143 when interrupted.
    """
    jobs = _plan(inputs, output, ".vqc")
    targets = [name for name, v in (("--quality", quality), ("--target-bpp", target_bpp),
                                     ("--size", size)) if v is not None]
    if len(targets) > 1:
        raise _usage(f"give only one of --quality, --target-bpp, --size (got {', '.join(targets)})",
                     "'" + "' / '".join(targets) + "'")
    if quality is not None and not 0 <= quality <= 100:  # NaN passes typer's range check
        raise _usage(f"must be a number from 0 to 100, got {quality}", "'-q' / '--quality'")
    if target_bpp is not None and not 0 < target_bpp < float("inf"):
        raise _usage(f"must be a number > 0, got {target_bpp}", "'--target-bpp'")
    if scale is not None and not 0.125 <= scale <= 1:  # also NaN
        raise _usage(f"must be a number with 0.125 <= S <= 1, got {scale}", "'--scale'")
    _check_stages_option(stages, targets, model)
    size_bytes = _parse_size(size) if size is not None else None
    with _interrupt_guard():
        from vqcodec import codec

        dev = _check_device(device)
        _check_model_stages(model, stages, quality, dev)
        settings = dict(quality=DEFAULT_QUALITY if quality is None else quality, effort=effort,
                        target_bpp=target_bpp, size=size_bytes, scale=scale)
        if stages is not None:
            settings["stages"] = stages
        raise typer.Exit(_run_jobs(jobs, "compressing",
                                   _compressor(codec, settings, dev, model, force, max_pixels)))


def _check_stages_option(stages: Optional[int], targets: list[str], model: Optional[str]) -> None:
    """Usage error (exit 2) for --stages below 1, with --quality / --target-bpp / --size (rate
    control is either the stages of a multi-stage model or a quality, not both), or without
    --model (the quality scale picks single-stage models only). An upper bound above the model's
    stages is the codec's ValueError (exit 2 too)."""
    if stages is None:
        return
    if stages < 1:
        raise _usage(f"must be a number of stages >= 1, got {stages}", "'--stages'")
    if targets:
        raise _usage(f"--stages is the rate control of a multi-stage model: give it without "
                     f"{', '.join(targets)}", "'--stages'")
    if model is None:
        raise _usage("--stages needs --model naming a multi-stage (arch rvq) model", "'--stages'")


def _check_model_stages(model: Optional[str], stages: Optional[int], quality: Optional[float],
                        dev: str) -> None:
    """With --model and --stages or --quality, load the model once up front: usage error (exit 2)
    for --stages above its stages (or > 1 for a single-stage model) and for --quality with a
    multi-stage model (its rate control is --stages; --target-bpp / --size pick the stages);
    the model's own error line and code (5) when it cannot be loaded."""
    if model is None or (stages is None and quality is None):
        return
    from vqcodec import codec, zoo

    try:
        m = zoo.load(model, device=dev)
    except VqcError as exc:
        _say(_stderr_console(), f"vqc: error: {exc}")
        raise typer.Exit(_exit_code(exc)) from None
    s_max = codec.model_stages(m)
    if stages is not None and stages > s_max:
        raise _usage(f"model {model} codes 1..{s_max} stages, got {stages}", "'--stages'")
    if quality is not None and codec.is_multistage(m):
        raise _usage(f"model {model} is multi-stage (arch rvq): its rate control is --stages "
                     "(or --target-bpp / --size), not --quality", "'-q' / '--quality'")


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2}


def _parse_size(text: str) -> int:
    """'30000', '30k' (x1024), '1.5m' (x1024**2) -> bytes >= 1; usage error (exit 2) otherwise."""
    t = text.strip().lower().removesuffix("b")
    unit = t[-1:] if t[-1:] in ("k", "m") else ""
    try:
        value = float(t[:len(t) - len(unit)])
    except ValueError:
        value = float("nan")
    if not (value * _SIZE_UNITS[unit] >= 1 and value < float("inf")):
        raise _usage(f"must be a size in bytes >= 1 such as 30000, 30k or 1.5m, got {text!r}",
                     "'--size'")
    return int(value * _SIZE_UNITS[unit])


def _compressor(codec, settings: dict, dev: str, model: Optional[str],
                force: bool, max_pixels: int = MAX_PIXELS) -> Callable[[_Job], str]:
    """The per-file work of `vqc compress`: returns the summary line. Inputs of more than
    `max_pixels` pixels are refused from their header (`vqcodec.images.load_image`)."""
    from vqcodec import images as vio

    written: set[str] = set()

    def work(job: _Job) -> str:
        _check_output(job, force, written)
        t0 = time.perf_counter()
        src, n_in = _image_input(job, max_pixels)
        try:
            image = vio.load_image(src, max_pixels=max_pixels)
        finally:
            src.close()
        data = codec.compress(image, device=dev, model=model, **settings)
        summary = container.read_summary(data, max_pixels=2**64)  # what we just wrote
        header, found = summary.header, _quality_desc(summary.chunks)
        size = _write_output(job, lambda fh: fh.write(data), force)
        if job.dst != STDIO:
            written.add(os.path.realpath(job.dst))
        pixels = header.width * header.height
        bpp = 8 * size / pixels
        note = (f"quality {found}" if found else f"{header.stages} stages" if "stages" in settings
                or header.stages > 1 else f"quality {settings['quality']:g}, effort {settings['effort']}")
        if settings["target_bpp"] is not None or settings["size"] is not None:
            want = (settings["size"] if settings["size"] is not None
                    else int(settings["target_bpp"] * pixels / 8))
            note += (f", target {_fmt_bytes(want)} {'met' if size <= want else 'NOT met (smallest file at quality 0)'}")
        if pixels > container.DEFAULT_MAX_PIXELS:
            note += f", above the default decode limit (decompress with --max-pixels {pixels})"
        return (f"{job.src_name} -> {job.dst_name}: {_fmt_bytes(n_in)} -> {_fmt_bytes(size)}, "
                f"{header.width}x{header.height}, {note}, {bpp:.4f} bpp, "
                f"{time.perf_counter() - t0:.2f} s")

    return work


@app.command()
def decompress(
    inputs: list[str] = typer.Argument(...,
                                       help=".vqc files to decompress ('-' reads stdin)."),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", metavar="OUT",
        help="Output file ('-' = stdout) for one input, or an existing directory. "
             "Default: <stem>.png next to each input."),
    device: Device = _DECODE_DEVICE,
    force: bool = _FORCE,
    max_pixels: int = typer.Option(container.DEFAULT_MAX_PIXELS, "--max-pixels", min=1,
                                   help="Refuse files whose image has more pixels than this."),
) -> None:
    """Decompress .vqc files to PNG images.\f

    Each input is read no further than its header allows (`_read_vqc_input`), checked whole
    by the container reader (CRC included) before the networks are loaded, so a rejected file
    costs its bytes and no torch, then goes through `vqcodec.native.decompress_auto` (the
    native core when available, without torch; else `vqcodec.codec.decompress`; at most
    `max_pixels` pixels) and `vqcodec.images.save_png`.

    Raises:
        typer.BadParameter: a usage error (exit 2), e.g. impossible -o.
        typer.Exit: always, with the first non-zero exit code of the inputs (`EXIT_CODES`),
            or 0; 130 / 143 when interrupted.
    """
    jobs = _plan(inputs, output, ".png")
    with _interrupt_guard():
        # --device cuda without a GPU fails once, up front; otherwise torch loads with the
        # first input that passes the container checks
        dev = _check_device(device) if device is Device.cuda else device.value
        raise typer.Exit(_run_jobs(jobs, "decompressing", _decompressor(dev, max_pixels, force)))


def _decompressor(dev: str, max_pixels: int, force: bool) -> Callable[[_Job], str]:
    """The per-file work of `vqc decompress`: returns the summary line."""
    from vqcodec import images as vio

    written: set[str] = set()

    def work(job: _Job) -> str:
        _check_output(job, force, written)
        t0 = time.perf_counter()
        data = _read_vqc_input(job, max_pixels)
        _check_container(data, max_pixels)  # a bad file fails before torch loads
        from vqcodec import native

        img = native.decompress_auto(data, device=dev, max_pixels=max_pixels)
        size = _write_output(job, lambda fh: vio.save_png(img, fh), force)
        if job.dst != STDIO:
            written.add(os.path.realpath(job.dst))
        w, h = img.size
        bpp = 8 * len(data) / (w * h)
        return (f"{job.src_name} -> {job.dst_name}: {_fmt_bytes(len(data))} -> {_fmt_bytes(size)}, "
                f"{w}x{h} {img.mode}, {bpp:.4f} bpp, {time.perf_counter() - t0:.2f} s")

    return work


def _check_container(data: bytes | bytearray, max_pixels: int) -> None:
    """Validate a whole .vqc file (`container.read_header`: structure, CRC, pixel limit); an
    image above the pixel limit says how to decode it anyway."""
    header = container.read_header(data, max_pixels=2**64)
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise VqcLimitError(f"image is {header.width}x{header.height} = {pixels:,} pixels, above the "
                            f"limit of {max_pixels:,}; decoding it needs --max-pixels {pixels} and "
                            f"about {_decode_gb(pixels):.1f} GB of memory")


def _decode_gb(pixels: int) -> float:
    """Rough peak memory of decoding an image of `pixels` pixels, GB (format/SPEC.md, "Budget")."""
    return 0.8 + 8 * pixels / 1e9


def describe(data: bytes, name: str = "") -> list[tuple[str, str]]:
    """The fields `vqc info` prints for `.vqc` bytes, as (label, value) pairs.

    Parses and fully validates the file (CRC included) with `container.read_summary`, with no
    pixel cap (nothing is decoded); format/SPEC.md, "Layout" and "Chunks".

    Args:
        data: the whole `.vqc` file.
        name: shown as the "file" field; omitted when empty.

    Returns:
        (label, value) pairs, both str, in display order; empty fields are left out.  Sizes are
        in bytes, "bpp" is 8 * len(data) / (width * height) bits per pixel.

    Raises:
        VqcFormatError: the file is malformed.
        VqcLimitError: more than MAX_TILES tiles.
    """
    f = container.read_summary(data, max_pixels=2**64)
    h = f.header
    pixels = h.width * h.height
    tiles = h.n_tiles
    tile_desc = (f"{tiles} (tile size {h.tile_h}x{h.tile_w} latent positions)"
                 if h.tile_h else f"{tiles} (the whole grid)")
    payload = f.payload_bytes
    skipped = f.skipped_chunk_bytes  # unknown optional chunks, dropped by the reader
    overhead = len(data) - payload - skipped
    if f.chunks:
        chunk_desc = ", ".join(
            f"{container.KNOWN_CHUNKS.get(c.type, f'type {c.type}')} ({_fmt_bytes(len(c.data))}"
            f"{', critical' if c.critical else ''})" for c in f.chunks)
    else:
        chunk_desc = "none"
    if skipped:
        chunk_desc += f"; unknown optional chunks skipped ({_fmt_bytes(skipped)})"
    size_note = "" if pixels <= container.DEFAULT_MAX_PIXELS else (
        f" (above the default decode limit of {container.DEFAULT_MAX_PIXELS} pixels)")
    fields = [
        ("file", name),
        ("format version", f"{container.VERSION_MAJOR}.{h.version_minor}"),
        ("model", f"{h.model_name} (id {h.model_hash.hex()})"),
        ("image", f"{h.width}x{h.height}, {h.mode.name}{size_note}"),
        ("coded size", _coded_size_desc(h, f.chunks)),
        ("latent grid", f"{h.grid_h}x{h.grid_w}"),
        ("stages", f"{h.stages} (indices per latent position)"),
        ("tiles", tile_desc),
        ("chunks", chunk_desc),
        ("payload bytes", f"{payload:,}"),
        ("container overhead bytes", f"{overhead + skipped:,}"),
        ("total bytes", f"{len(data):,}"),
        ("bpp", f"{8 * len(data) / pixels:.4f}"),
        ("quality", _quality_desc(f.chunks)),
    ]
    return [(k, v) for k, v in fields if v]


def _coded_size_desc(header: container.Header, chunks) -> str:
    """'WxH (upsampled to the image size)' when the coded size differs from the display size,
    else '' (format/SPEC.md, "Chunks", type 5)."""
    coded_h, coded_w = container.coded_size(header, chunks)
    if (coded_h, coded_w) == (header.height, header.width):
        return ""
    return (f"{coded_w}x{coded_h} (scale {coded_w / header.width:.3g} x {coded_h / header.height:.3g}, "
            "upsampled to the image size)")


def _quality_desc(chunks) -> str:
    """The quality chunk as 'Q (effort E)', 'malformed chunk', or '' when there is none."""
    for c in chunks:
        if c.type == container.CHUNK_QUALITY:
            qe = container.unpack_quality(c.data)
            return "malformed quality chunk" if qe is None else f"{qe[0]:g} (effort {qe[1]})"
    return ""


@app.command()
def info(
    inputs: list[str] = typer.Argument(...,
                                       help=".vqc files to describe ('-' reads stdin)."),
) -> None:
    """Print the header fields, chunks, sizes and bpp of .vqc files (nothing is decoded).\f

    One block of `describe` lines per input on stdout, blocks separated by a blank line.

    Raises:
        typer.BadParameter: '-' given with other inputs (exit 2).
        typer.Exit: always, with the first non-zero exit code of the inputs (`EXIT_CODES`),
            or 0.
    """
    if STDIO in inputs and len(inputs) > 1:
        raise _usage("'-' (stdin) can only be used as the only input", "INPUTS")
    jobs = [_Job(src, STDIO) for src in inputs]
    width = len("container overhead bytes:")

    def work(job: _Job) -> str:
        out = _std_stream(1)  # exit 8 when stdout is closed, before reading anything
        data = _read_vqc_input(job, MAX_PIXELS)  # any file vqc compress can write
        text = "".join(f"{label + ':':<{width}} {one_line(value)}\n"
                       for label, value in describe(data, job.src_name))
        if job is not jobs[0]:
            text = "\n" + text
        try:
            out.write(text.encode("utf-8", "backslashreplace"))
            out.flush()
        except OSError as exc:
            _silence_stdout()
            raise _CliError(f"cannot write {_STDOUT_NAME}: {_os_reason(exc)}", EXIT_IO) from None
        return ""

    with _interrupt_guard():
        raise typer.Exit(_run_jobs(jobs, "reading", work, progress_bar=False))


if __name__ == "__main__":
    app(prog_name="vqc")
