#!/usr/bin/env python3
"""Browser test of the WebAssembly decoder: every conformance vector, every broken file and a Kodak
image decoded by native/web/vqc.js in headless Chromium, compared with the expected pixels.

    python3 native/web/test.py                      # build, test, print timings
    python3 native/web/test.py --screenshot /tmp/vqc-page.png

Needs: chromium, clang-14 + lld-14 + wasi-libc (the wasm build, `make -C native/web`), Pillow with
AVIF, and the vqcodec package (to make the Kodak file and its reference PNG). Everything is served
on 127.0.0.1 only; Chromium runs headless with a fresh profile and no network besides that.

Checks, per file: the pixels' SHA-256 in the image's mode (L, LA, RGB or RGBA, as
format/vectors/vectors.json computes them) equals the expected one, mode and size equal, the RGBA
ImageData is a faithful expansion (grey R = G = B, A = 255 without alpha); a broken file (format/
vectors/broken/broken.json) is rejected with the same error class. kodim23 is compressed at the
default quality here and compared with `vqc decompress`'s PNG.
"""
from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "format" / "vectors"
KODAK = ROOT.parent / "shared" / "data" / "kodak" / "kodim23.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--disable-default-apps", "--mute-audio"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def missing_tools() -> list[str]:
    """What the test needs and this machine lacks (empty: all there)."""
    miss = []
    if not find_chromium():
        miss.append("chromium (apt-get install chromium)")
    if not any(shutil.which(c) for c in ("clang-14", "clang-16", "clang-15", "clang")):
        miss.append("clang (apt-get install clang-14 lld-14)")
    if not any(shutil.which(c) for c in ("wasm-ld", "wasm-ld-14", "wasm-ld-16", "wasm-ld-15")):
        miss.append("wasm-ld (apt-get install lld-14)")
    if not Path("/usr/include/wasm32-wasi/stdlib.h").exists() and not os.environ.get("WASI_SYSROOT"):
        miss.append("wasi-libc (apt-get install wasi-libc)")
    return miss


def build() -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "native" / "web")], check=True)


def _vqc(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "vqcodec.cli", *args], env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"vqc {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")


def make_kodak(tmp: Path) -> dict | None:
    """kodim23 at the default quality, its reference pixels and an AVIF of about its size."""
    if not KODAK.exists():
        return None
    from PIL import Image

    vqc, png = tmp / "kodim23.vqc", tmp / "kodim23.ref.png"
    _vqc("compress", str(KODAK), "-o", str(vqc), "--device", "cpu", "-f")
    _vqc("decompress", str(vqc), "-o", str(png), "--device", "cpu", "-f")
    ref = Image.open(png)
    ref.load()
    target = vqc.stat().st_size
    src = Image.open(KODAK).convert("RGB")
    best = None  # the AVIF quality whose size is closest to the .vqc file's
    lo, hi = 0, 100
    while lo <= hi:
        q = (lo + hi) // 2
        buf = io.BytesIO()
        src.save(buf, "AVIF", quality=q)
        n = buf.tell()
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (q, n, buf.getvalue())
        if n > target:
            hi = q - 1
        else:
            lo = q + 1
    (tmp / "kodim23.avif").write_bytes(best[2])
    return {"file": "_t/kodim23.vqc", "mode": ref.mode, "size": list(ref.size),
            "pixels_sha256": hashlib.sha256(ref.tobytes()).hexdigest(), "avif_quality": best[0]}


def make_gamma_alpha(tmp: Path) -> dict:
    """rgba-40x30.q2.vqc with its alpha PNG re-encoded with gAMA (0.1) and cHRM chunks: SPEC's
    decoding step 6 ignores them, so the pixels stay the vector's."""
    from PIL import Image, PngImagePlugin

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from vqcodec import container

    name = "rgba-40x30.q2.vqc"
    f = container.read((VECTORS / name).read_bytes())
    chunks = []
    for c in f.chunks:
        if c.type == 1:
            info = PngImagePlugin.PngInfo()
            info.add(b"gAMA", (10000).to_bytes(4, "big"))
            info.add(b"cHRM", b"".join(v.to_bytes(4, "big") for v in
                                       (31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)))
            buf = io.BytesIO()
            Image.open(io.BytesIO(c.data)).save(buf, "PNG", pnginfo=info)
            c = container.Chunk(c.type, c.critical, buf.getvalue())
        chunks.append(c)
    out = tmp / "rgba-40x30.alpha-gama.vqc"
    out.write_bytes(container.write(container.VqcFile(f.header, f.payloads, tuple(chunks))))
    exp = json.loads((VECTORS / "vectors.json").read_text())[name]
    return {"file": f"_t/{out.name}", "mode": exp["mode"], "size": exp["size"], "pixels_sha256": exp["pixels_sha256"]}


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript",
                      ".vqc": "application/octet-stream", ".avif": "image/avif"}

    def translate_path(self, path):
        p = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        if p.startswith("/_t/"):
            base, rel = self.server.tmp, p[4:]
        else:
            base, rel = ROOT, p.lstrip("/")
        full = (base / rel).resolve()
        if base not in full.parents and full != base:
            return str(base / "__nonexistent__")
        return str(full)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(204)
        self.end_headers()
        if self.path == "/_results":
            self.server.results = json.loads(body)
            self.server.done.set()

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args):
        pass


def serve(tmp: Path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.tmp = tmp.resolve()
    srv.results = None
    srv.done = threading.Event()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def chromium(url: str, profile: Path, extra: list[str] = ()) -> subprocess.Popen:
    return subprocess.Popen([find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    """End Chromium: terminate, then kill if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def run(tmp: Path, timeout: float = 300) -> tuple[list[tuple[str, bool, str]], dict]:
    """Run the page; returns [(name, passed, detail)] and the timings."""
    expected = json.loads((VECTORS / "vectors.json").read_text())
    broken = json.loads((VECTORS / "broken" / "broken.json").read_text())
    files = [{"file": f"format/vectors/{k}", **v} for k, v in expected.items()]
    files += [{"file": f"format/vectors/broken/{k}", **v} for k, v in broken.items()]
    files.append(make_gamma_alpha(tmp))
    kodak = make_kodak(tmp)
    if kodak:
        files.append(kodak)
    cases = {"files": files}
    if kodak:
        cases["timing"] = {"vqc": "_t/kodim23.vqc", "avif": "_t/kodim23.avif"}
    (tmp / "cases.json").write_text(json.dumps(cases))
    srv = serve(tmp)
    url = f"http://127.0.0.1:{srv.server_address[1]}/native/web/test.html?cases=/_t/cases.json"
    proc = chromium(url, tmp / "profile")
    try:
        if not srv.done.wait(timeout):
            raise TimeoutError(f"no result from Chromium within {timeout} s ({url})")
    finally:
        _stop(proc)
        srv.shutdown()
    res = srv.results
    if "fatal" in res:
        raise RuntimeError(f"test page failed: {res['fatal']}")
    got = {r["file"]: r for r in res["cases"]}
    out = []
    for c in files:
        r = got.get(c["file"])
        name = c["file"].split("/", 2)[-1] if c["file"].startswith("format/") else c["file"][3:]
        if r is None:
            out.append((name, False, "no result"))
        elif "error" in c:
            if r["ok"]:
                out.append((name, False, f"decoded, expected a {c['error']} error"))
            elif r["kind"] != c["error"]:
                out.append((name, False, f"{r['kind']} error ({r['message']}), expected {c['error']}"))
            else:
                out.append((name, True, f"{r['kind']} error: {r['message']}"))
        elif not r["ok"]:
            out.append((name, False, f"{r['kind']} error: {r['message']}"))
        else:
            bad = []
            if r["mode"] != c["mode"]:
                bad.append(f"mode {r['mode']} != {c['mode']}")
            if r["size"] != list(c["size"]):
                bad.append(f"size {r['size']} != {c['size']}")
            if r["pixels_sha256"] != c["pixels_sha256"]:
                bad.append("pixels differ")
            if not r["consistent"]:
                bad.append("RGBA expansion inconsistent")
            out.append((name, not bad, "; ".join(bad) or f"{r['mode']} {r['size'][0]}x{r['size'][1]} identical"))
    timing = res.get("timing", {})
    if kodak:
        timing["avif_quality"] = kodak["avif_quality"]
    return out, timing


class _Cdp:
    """Chrome DevTools Protocol over --remote-debugging-pipe (no driver, no extra package)."""

    def __init__(self, proc, to_chrome, from_chrome):
        self.proc, self.w, self.r, self.n, self.buf = proc, to_chrome, from_chrome, 0, b""

    def call(self, method, session=None, **params):
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buf:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            m = json.loads(raw)
            if m.get("id") == self.n:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]


def screenshot(tmp: Path, path: Path, src: str | None = None, timeout: float = 120) -> str:
    """The viewer page showing src (default kodim23, or a conformance vector without Kodak), saved as
    PNG; returns the page's status line."""
    import base64

    if src is None:
        src = "/format/vectors/rgb-100x75.q1.vqc"
        if (tmp / "kodim23.vqc").exists() or make_kodak(tmp):
            src = "/_t/kodim23.vqc"
    srv = serve(tmp)
    url = f"http://127.0.0.1:{srv.server_address[1]}/native/web/index.html?src={src}"
    r1, w1 = os.pipe()  # to Chromium (its fd 3)
    r2, w2 = os.pipe()  # from Chromium (its fd 4)

    def fds():  # in the child: the pipe ends on fds 3 and 4
        a, b = os.dup(r1), os.dup(w2)
        os.dup2(a, 3)
        os.dup2(b, 4)

    proc = subprocess.Popen([find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile-shot'}",
                             "--remote-debugging-pipe", "--window-size=900,760", "about:blank"],
                            preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(r1)
    os.close(w2)
    try:
        cdp = _Cdp(proc, w1, r2)
        target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
        s = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        cdp.call("Emulation.setDeviceMetricsOverride", s, width=900, height=760, deviceScaleFactor=1, mobile=False)
        cdp.call("Page.navigate", s, url=url)
        end = time.time() + timeout
        while time.time() < end:
            state = cdp.call("Runtime.evaluate", s, expression="document.body && document.body.dataset.state")
            if state["result"].get("value") in ("done", "error"):
                break
            time.sleep(0.2)
        else:
            raise TimeoutError("the page did not finish decoding")
        shot = cdp.call("Page.captureScreenshot", s, format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        return cdp.call("Runtime.evaluate", s, expression="document.getElementById('status').textContent")["result"]["value"]
    finally:
        _stop(proc)
        os.close(w1)
        os.close(r2)
        srv.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-build", action="store_true", help="use native/build/*.wasm as they are")
    ap.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the viewer page instead")
    ap.add_argument("--src", help="with --screenshot: the .vqc URL to show (default kodim23)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary directory")
    args = ap.parse_args()
    miss = missing_tools()
    if miss:
        print("missing: " + ", ".join(miss), file=sys.stderr)
        return 2
    if not args.no_build:
        build()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vqc-web-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if args.screenshot:
            line = screenshot(tmp, Path(args.screenshot).resolve(), args.src)
            print(f"saved {args.screenshot}: {line}")
            return 0
        results, timing = run(tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
    if timing:
        med = lambda xs: sorted(xs)[len(xs) // 2]
        vw, aw = med(timing["vqc_warm_ms"]), med(timing["avif_warm_ms"])
        print(f"kodim23 .vqc ({timing['vqc_bytes']} B): first decode {timing['vqc_cold_ms']:.0f} ms "
              f"(wasm compile + model fetch/hash/load), then median {vw:.0f} ms")
        print(f"kodim23 AVIF q{timing['avif_quality']} ({timing['avif_bytes']} B): createImageBitmap first "
              f"{timing['avif_cold_ms']:.0f} ms, median {aw:.0f} ms; with getImageData {med(timing['avif_pixels_ms']):.0f} ms")
        print(f"ratio vqc / AVIF (warm medians): {vw / aw:.0f}x; the page's longest main-thread stall during "
              f"the .vqc decodes: {timing['main_thread_max_gap_ms']:.0f} ms (the decode runs in a worker)")
    n_ok = sum(ok for _, ok, _ in results)
    print(f"{n_ok} passed, {len(results) - n_ok} failed")
    return 0 if n_ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
