"""Hostile inputs of issue 14, built byte by byte, and a harness that measures them through the CLI
(with the output and CLI findings of issue 21).

    python tests/fuzz/hostile.py                 # run every reproduction, print a table
    python tests/fuzz/hostile.py --write DIR     # only write the hostile .vqc files to DIR

Each reproduction runs `python -m vqcodec.cli ...` in a subprocess (OMP_NUM_THREADS=1) and
reports its exit code, its stderr (the one error line), its wall time and its peak RSS
(`os.wait4`'s ru_maxrss), and whether anything was left behind in its directory. The issue's
bar: one clear error line (or correct output), peak RSS < 600 MB, < 20 s, nothing left behind,
and the device / FIFO / permission cases leave the user's file as it was.

The `.vqc` builders (`hostile_files`) are also the hostile part of the fuzz seed corpus
(tests/fuzz/corpus/, written by `--write`) and are used by tests/test_hostile.py.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from vqcodec import container  # noqa: E402

#: (name, first 8 bytes of the SHA-256) of the released models (vqcodec/registry.py RELEASES).
F8 = ("vqc-f8k1024-v1", bytes.fromhex("cfbb43da95d18adc"))
F4 = ("vqc-f4k512-v1", bytes.fromhex("2313ca46b002bd67"))


_varint = container._varint  # the format's LEB128 (SPEC "Conventions"); the hostile part is the values


def raw(model=F4, width=1, height=1, mode=3, grid=(1, 1), tile=(64, 64), chunks=b"\x00",
        payloads: bytes = b"", crc: bytes | None = None) -> bytes:
    """A hand-made file: every field as given (no writer checks); a correct CRC unless `crc`."""
    name, digest = model
    body = (container.MAGIC + b"\x01\x00" + bytes([len(name)]) + name.encode() + digest
            + _varint(width) + _varint(height) + bytes([mode]) + _varint(grid[0]) + _varint(grid[1])
            + _varint(tile[0]) + _varint(tile[1]) + chunks + payloads)
    return body + (crc if crc is not None else zlib.crc32(body).to_bytes(4, "little"))


def hostile_files() -> dict[str, bytes]:
    """The hostile `.vqc` reproductions of issue 14 (findings 1 and 3) and a few relatives."""
    one_word = b"\x04" + b"\x11\x22\x33\x44"
    return {
        # finding 1: a header claiming 2^24 / 2^26 / 2^28 tiles, 'JUNK' where the CRC should be
        "f1-2e24-tiles.vqc": raw(model=("m", b"\x00" * 8), width=1, height=2**24, grid=(2**24, 1),
                                 tile=(1, 1), crc=b"JUNK"),
        "f1-2e26-tiles.vqc": raw(model=F4, width=2**13, height=2**13, grid=(2**13, 2**13),
                                 tile=(1, 1), crc=b"JUNK"),
        "f1-2e28-tiles.vqc": raw(model=F4, width=2**14, height=2**14, grid=(2**14, 2**14),
                                 tile=(1, 1), crc=b"JUNK"),
        "f1-2e20-tiles-valid-crc.vqc": raw(model=F4, width=4096, height=4096, grid=(1024, 1024),
                                           tile=(1, 1), payloads=b"\x00" * 2**20),
        # finding 3: 4096x2048 with 256x256 tiles and 8 empty payloads (was OOM-killed at 4 GiB)
        "f3-tile256-empty.vqc": raw(width=4096, height=2048, grid=(512, 1024), tile=(256, 256),
                                    payloads=b"\x00" * 8),
        # finding 3: 16384x16384, 4,096 empty 64x64 payloads (was ~8.6 h, then a 6.4 GB image)
        "f3-16k-empty.vqc": raw(width=16384, height=16384, grid=(4096, 4096),
                                payloads=b"\x00" * 4096),
        # the same with one 32-bit word per tile: starts decoding, must stop when it runs out
        "f3-16k-one-word.vqc": raw(width=16384, height=16384, grid=(4096, 4096),
                                   payloads=one_word * 4096),
        # 256x256 tiles with one word each: above the decoder's tile budget
        "f3-tile256-one-word.vqc": raw(width=4096, height=2048, grid=(512, 1024),
                                       tile=(256, 256), payloads=one_word * 8),
        # one tile, a payload of 2 words followed by 6 words the stream never needs
        "f3-words-left-over.vqc": raw(width=4, height=4, payloads=b"\x20" + b"\x00" * 32),
    }


# ------------------------------------------------------------------------------------ harness


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))


# Linux carries a process's peak RSS across exec, so a CLI started straight from this process (the
# test runner: hundreds of MB with torch and numba loaded) would report this process's size as its
# own peak.  A small launcher forks the CLI, reports the CLI's own peak (ru_maxrss, KB) in a file,
# forwards SIGINT/SIGTERM to it, and exits as it did; the CLI dies with the launcher.
_LAUNCHER = """
import ctypes, os, signal, sys
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.execv(sys.executable, [sys.executable, "-m", "vqcodec.cli", *sys.argv[2:]])
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda n, f: os.kill(pid, n))
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
os._exit(code)
"""


def run_cli(args: list[str], cwd: Path, stdin=None, stdout=subprocess.PIPE, pass_fds=(),
            timeout: float = 120, preexec=None, after_start=None) -> dict:
    """Run `python -m vqcodec.cli *args`; returns rc, stderr lines, seconds, peak RSS (MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss"
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(rss_file), *args], cwd=cwd, env=_env(),
                                stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, pass_fds=pass_fds,
                                preexec_fn=preexec)
        if after_start:
            after_start(proc)
        deadline = t0 + timeout
        err = b""
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        err = proc.stderr.read() if proc.stderr else b""
        proc.returncode = os.waitstatus_to_exitcode(status)
        try:
            rss_kb = int(rss_file.read_text())
        except (OSError, ValueError):  # the launcher was killed (timeout): its own figure
            rss_kb = usage.ru_maxrss
    return {"rc": proc.returncode, "stderr": err.decode(errors="replace").strip().splitlines(),
            "s": seconds, "rss_mb": rss_kb / 1024}


def _leftovers(d: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name not in keep)


def scenarios(work: Path) -> list[tuple[str, dict, str]]:
    """Run every reproduction; returns (name, result, verdict note)."""
    out = []
    files = work / "files"
    files.mkdir()
    for name, data in hostile_files().items():
        (files / name).write_bytes(data)
    keep = set(os.listdir(files))
    for name in sorted(keep):
        for cmd in (["info"], ["decompress", "--device", "cpu", "--max-pixels", str(2**28), "-o", "out.png"]):
            r = run_cli([*cmd, name], files)
            out.append((f"{cmd[0]} {name}", r, f"left: {_leftovers(files, keep)}"))

    # finding 4: unbounded inputs
    sparse = work / "sparse.vqc"
    with open(sparse, "wb") as fh:
        fh.truncate(3 << 30)
    out.append(("info 3 GB sparse file", run_cli(["info", str(sparse)], work), ""))
    sparse_magic = work / "sparse-magic.vqc"
    with open(sparse_magic, "wb") as fh:
        fh.write(container.MAGIC + b"\x01\x00")
        fh.truncate(3 << 30)
    out.append(("decompress 3 GB sparse file with a valid magic",
                run_cli(["decompress", str(sparse_magic), "-o", str(work / "m.png")], work), ""))
    out.append(("info /dev/zero", run_cli(["info", "/dev/zero"], work), ""))
    out.append(("compress /dev/zero", run_cli(["compress", "/dev/zero", "-o", str(work / "z.vqc")], work),
                f"z.vqc written: {(work / 'z.vqc').exists()}"))
    out.append(("compress - < /dev/zero",
                run_cli(["compress", "-", "-o", str(work / "z.vqc")], work, stdin=open("/dev/zero", "rb")),
                ""))
    fifo = work / "yes.fifo"
    os.mkfifo(fifo)
    yes = subprocess.Popen(["sh", "-c", f"yes > '{fifo}'"], stderr=subprocess.DEVNULL)
    out.append(("compress FIFO fed by yes", run_cli(["compress", str(fifo), "-o", str(work / "y.vqc")], work), ""))
    yes.kill()
    yes.wait()
    yes = subprocess.Popen(["sh", "-c", f"yes > '{fifo}'"], stderr=subprocess.DEVNULL)
    out.append(("info FIFO fed by yes", run_cli(["info", str(fifo)], work), ""))
    yes.kill()
    yes.wait()

    # finding 2: --force onto a FIFO, a device-like target, a 0600 file
    sample = REPO_ROOT / "tests" / "data" / "sample.png"
    png = work / "in.png"
    from PIL import Image

    Image.open(sample).convert("RGB").crop((0, 0, 48, 32)).save(png)
    private = work / "private.vqc"
    private.write_bytes(b"old")
    os.chmod(private, 0o600)
    r = run_cli(["compress", str(png), "-o", str(private), "--force", "-q", "1"], work)
    mode = oct(stat.S_IMODE(os.stat(private).st_mode))
    out.append(("compress --force onto a 0600 file", r, f"mode after: {mode}"))
    out.append(("compress --force -o /dev/null", run_cli(["compress", str(png), "-o", "/dev/null", "--force", "-q", "1"], work),
                f"/dev/null is a char device: {stat.S_ISCHR(os.stat('/dev/null').st_mode)}"))
    fifo2 = work / "out.fifo"
    os.mkfifo(fifo2)
    reader = subprocess.Popen(["sh", "-c", f"cat '{fifo2}' > '{work / 'from-fifo.vqc'}'"])
    r = run_cli(["compress", str(png), "-o", str(fifo2), "--force", "-q", "1"], work)
    reader.wait(timeout=60)
    out.append(("compress --force -o FIFO", r,
                f"still a FIFO: {stat.S_ISFIFO(os.lstat(fifo2).st_mode)}, "
                f"reader got {(work / 'from-fifo.vqc').stat().st_size} bytes"))

    # finding 5: closed / full standard streams
    good = work / "good.vqc"
    run_cli(["compress", str(png), "-o", str(good), "-q", "1"], work)
    close1 = lambda: os.close(1)  # noqa: E731
    close0 = lambda: os.close(0)  # noqa: E731
    out.append(("decompress -o - >&-", run_cli(["decompress", str(good), "-o", "-"], work, stdout=None, preexec=close1), ""))
    out.append(("compress -o - >&-", run_cli(["compress", str(png), "-o", "-", "-q", "1"], work, stdout=None, preexec=close1), ""))
    out.append(("compress - <&-", run_cli(["compress", "-", "-o", str(work / "c.vqc"), "-q", "1"], work, preexec=close0), ""))
    out.append(("info >&-", run_cli(["info", str(good)], work, stdout=None, preexec=close1), ""))
    with open("/dev/full", "wb") as full:
        out.append(("info > /dev/full", run_cli(["info", str(good)], work, stdout=full), ""))

    # finding 6: SIGTERM while decompressing a large file, SIGINT during imports
    big = work / "big.png"
    Image.open(sample).convert("RGB").resize((1024, 768)).save(big)
    big_vqc = work / "big.vqc"
    run_cli(["compress", str(big), "-o", str(big_vqc), "-q", "1"], work, timeout=300)
    term_dir = work / "term"
    term_dir.mkdir()

    def term_later(proc):
        time.sleep(6)
        proc.send_signal(signal.SIGTERM)

    r = run_cli(["decompress", str(big_vqc), "-o", str(term_dir / "big.png")], work, after_start=term_later)
    out.append(("SIGTERM during decompress", r, f"left: {sorted(os.listdir(term_dir))}"))

    def int_soon(proc):
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)

    r = run_cli(["decompress", str(good), "-o", str(term_dir / "g.png")], work, after_start=int_soon)
    out.append(("SIGINT 0.3 s after start (imports)", r, f"left: {sorted(os.listdir(term_dir))}"))
    return out + issue21_scenarios(work / "issue21", png, good)


def _sparse(path: Path, head: bytes, size: int) -> str:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return str(path)


def issue21_scenarios(work: Path, png: Path, good: Path) -> list[tuple[str, dict, str]]:
    """The output and CLI findings of issue 21 (setuid modes, special outputs, large junk)."""
    work.mkdir()
    out = []
    setuid = work / "setuid.vqc"
    setuid.write_bytes(b"old")
    os.chmod(setuid, 0o4757)
    r = run_cli(["compress", str(png), "-o", str(setuid), "--force", "-q", "1"], work)
    out.append(("compress --force onto a 4757 file", r, f"mode after: {oct(stat.S_IMODE(os.stat(setuid).st_mode))}"))
    link = work / "good.png"
    os.symlink("/dev/null", link)
    local = work / "good.vqc"
    local.write_bytes(good.read_bytes())
    out.append(("decompress, default output a link to /dev/null", run_cli(["decompress", str(local)], work),
                f"still a link: {link.is_symlink()}"))
    fifo = work / "noreader.fifo"
    os.mkfifo(fifo)
    out.append(("decompress --force -o FIFO without a reader",
                run_cli(["decompress", str(local), "-o", str(fifo), "--force"], work, timeout=60), ""))
    small = _sparse(work / "small.vqc", raw(width=64, height=64, grid=(16, 16)), 500 << 20)
    big = _sparse(work / "big.vqc", raw(width=2**14, height=2**14, grid=(2**12, 2**12))[:-4], 500 << 20)
    for name, path in (("64x64 header", small), ("2^28-pixel header", big)):
        out.append((f"info 500 MB junk, {name}", run_cli(["info", path], work), ""))
        out.append((f"decompress 500 MB junk, {name}",
                    run_cli(["decompress", "--max-pixels", str(2**28), path, "-o", str(work / "j.png")], work), ""))
    newline = work / "a\nb.vqc"
    newline.write_bytes(b"junk")
    out.append(("info on a name with a newline", run_cli(["info", str(newline)], work), ""))
    return out


def main(argv: list[str]) -> int:
    if len(argv) > 2 and argv[1] == "--write":
        d = Path(argv[2])
        d.mkdir(parents=True, exist_ok=True)
        for name, data in hostile_files().items():
            if len(data) <= 16384:  # the fuzz corpus keeps small inputs (libFuzzer's -max_len)
                (d / name).write_bytes(data)
        return 0
    with tempfile.TemporaryDirectory(prefix="vqc-hostile-") as tmp:
        rows = scenarios(Path(tmp))
    print(f"{'reproduction':58} {'rc':>4} {'s':>6} {'RSS MB':>7}  stderr / note")
    worst_rss = worst_s = 0.0
    for name, r, note in rows:
        worst_rss, worst_s = max(worst_rss, r["rss_mb"]), max(worst_s, r["s"])
        err = " | ".join(r["stderr"]) or "(nothing on stderr)"
        print(f"{name[:58]:58} {r['rc']:>4} {r['s']:>6.2f} {r['rss_mb']:>7.0f}  {err}  {note}")
    print(f"worst: {worst_s:.2f} s, {worst_rss:.0f} MB peak RSS over {len(rows)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
