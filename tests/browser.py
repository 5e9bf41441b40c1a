"""Headless Chromium for the report tests, driven over the DevTools protocol.

No Python dependency beyond the standard library: a minimal WebSocket client
(RFC 6455: handshake, masked client frames, fragmented server messages) talks
to Chromium's ``--remote-debugging-port``.  ``open_page(html)`` loads a file://
URL (no server), waits for the load event and returns every ``<img>``'s
status, the console errors / exceptions / failed requests, the URLs requested,
and a full-page PNG screenshot.

``find_chromium()`` looks for the browser; ``ensure_chromium()`` installs
Debian's ``chromium`` with apt-get when it is missing and we are root (logged
to ``chromium-apt.log`` in the given directory), else returns None with the
reason, which the tests turn into a skip.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Headless, no sandbox (containers run as root), nothing in the background that
# reaches the network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
    "--metrics-recording-only",
    "--no-pings",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-allow-origins=*",
]


def find_chromium() -> str | None:
    for name in CANDIDATES:
        p = shutil.which(name)
        if p:
            return p
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def ensure_chromium(log_dir: str | os.PathLike) -> tuple[str | None, str]:
    """(path, "") if Chromium is there or could be installed, else (None, reason)."""
    path = find_chromium()
    if path:
        return path, ""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, (
            "Chromium is not installed and cannot be installed here (needs root and "
            "apt-get): apt-get install -y chromium"
        )
    log = Path(log_dir) / "chromium-apt.log"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with open(log, "w") as fh:
        for cmd in (
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
        ):
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            rc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=900
            ).returncode
            if cmd[1] == "install" and rc == 0:
                break
    path = find_chromium()
    if path:
        return path, ""
    return None, f"apt-get install chromium failed; see {log}"


# --------------------------------------------------------------------------- WebSocket
class WebSocket:
    """The smallest WebSocket client that CDP needs (text frames, no extensions)."""

    def __init__(self, url: str, timeout: float = 30.0):
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path + (f"?{u.query}" if u.query else "")
        req = (
            f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("WebSocket handshake: connection closed")
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n")[0]:
            raise ConnectionError(f"WebSocket handshake refused: {status[:200]!r}")
        self._buf = rest

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionError("WebSocket closed")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def send(self, text: str) -> None:
        data = text.encode()
        n = len(data)
        head = bytes([0x81])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + body)

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._read(2)
            fin, op = b0 & 0x80, b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if op == 0x8:
                raise ConnectionError("WebSocket closed by the browser")
            if op == 0x9:  # ping -> pong
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                continue
            if op in (0x1, 0x2, 0x0):
                parts.append(payload)
                if fin:
                    return b"".join(parts).decode()

    def close(self) -> None:
        try:
            self.sock.sendall(bytes([0x88, 0x80]) + b"\0\0\0\0")
        except OSError:
            pass
        self.sock.close()


class CDP:
    """Commands and events over one DevTools WebSocket."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.ws = WebSocket(url, timeout)
        self.events: list[dict] = []
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        for e in self.events:
            if e["method"] == method:
                return e
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg
        raise TimeoutError(f"no {method} within {timeout} s")


# --------------------------------------------------------------------------- page check
@dataclass
class PageCheck:
    images: list[dict]
    errors: list[str]
    requests: list[str]
    screenshot: bytes = field(repr=False)
    title: str = ""
    text: str = field(default="", repr=False)


def open_page(
    chromium: str,
    html_path: str | os.PathLike,
    width: int = 1280,
    height: int = 900,
    timeout: float = 60.0,
) -> PageCheck:
    """Load ``html_path`` from file:// in headless Chromium and report on it."""
    url = Path(html_path).resolve().as_uri()
    # Chromium's helper processes may still write to the profile as it closes.
    with tempfile.TemporaryDirectory(prefix="xtec-chromium-",
                                     ignore_cleanup_errors=True) as profile:
        err = open(Path(profile) / "stderr.log", "wb")
        proc = subprocess.Popen(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group: closed as a whole below
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            end = time.monotonic() + timeout
            while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"Chromium exited with {proc.returncode}: "
                        f"{(Path(profile) / 'stderr.log').read_text()[-2000:]}"
                    )
                if time.monotonic() > end:
                    raise TimeoutError("Chromium did not open its DevTools port")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            conn.request("GET", "/json/list")
            targets = json.loads(conn.getresponse().read())
            page = next(t for t in targets if t.get("type") == "page")
            cdp = CDP(page["webSocketDebuggerUrl"], timeout)
            try:
                return _check(cdp, url, width, height, timeout)
            finally:
                cdp.ws.close()
        finally:
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            err.close()


def _check(cdp: CDP, url: str, width: int, height: int, timeout: float) -> PageCheck:
    for domain in ("Page", "Runtime", "Log", "Network"):
        cdp.call(f"{domain}.enable")
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    cdp.events.clear()
    nav = cdp.call("Page.navigate", url=url)
    if nav.get("errorText"):
        raise RuntimeError(f"navigation to {url} failed: {nav['errorText']}")
    cdp.wait_event("Page.loadEventFired", timeout)
    # Every image decoded (complete with a natural size), read from the page itself.
    res = cdp.call(
        "Runtime.evaluate",
        returnByValue=True,
        awaitPromise=True,
        expression="""
        Promise.all(Array.from(document.images).map(i => i.decode().then(() => true,
            () => false))).then(ok => ({
          title: document.title,
          text: document.body.innerText,
          images: Array.from(document.images).map((i, n) => ({
            file: i.dataset.file || '', alt: i.alt, src: i.src.slice(0, 30),
            complete: i.complete, decoded: ok[n],
            naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))}))
    """,
    )
    if "exceptionDetails" in res:
        raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
    value = res["result"]["value"]
    metrics = cdp.call("Page.getLayoutMetrics")
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    full_h = int(min(max(size["height"], height), 16000))
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        width=width,
        height=full_h,
        deviceScaleFactor=1,
        mobile=False,
    )
    shot = cdp.call(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": width, "height": full_h, "scale": 1},
    )
    errors, requests = [], []
    for e in cdp.events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(
                "console: "
                + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
            )
        elif m == "Runtime.exceptionThrown":
            errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif m == "Network.loadingFailed":
            errors.append(f"request failed: {p.get('errorText')}")
        elif m == "Network.requestWillBeSent":
            requests.append(p.get("request", {}).get("url", "")[:80])
    return PageCheck(
        value["images"],
        errors,
        requests,
        base64.b64decode(shot["data"]),
        value["title"],
        value["text"],
    )


# --------------------------------------------------------------------------- shared result
_RESULTS: dict = {}


def small_result(tmp_path_factory):
    """One clustering of a small synthetic series (16 temperatures, 11 x 61 x 61), shared by
    the report and accessor tests: ``(series, nexus_path, result_path)``.

    Built once per session (it takes a few seconds), cached here because fixtures
    imported into two test modules would each run.
    """
    if "small" not in _RESULTS:
        import numpy as np

        from xtec.datasets import make_series, write_xtec
        from xtec.pipeline import ClusterConfig, run_cluster

        d = tmp_path_factory.mktemp("report-result")
        series = make_series(
            h_range=(-1.5, 1.5),
            k_range=(-1.5, 1.5),
            l_range=(-0.5, 0.5),
            temperatures=np.linspace(20, 300, 16),
            seed=0,
        )
        src = write_xtec(series, d / "series.nxs")
        res = run_cluster(ClusterConfig(inputs=[str(src)], out=str(d / "result.zarr"), k=4, seed=0))
        _RESULTS["small"] = (series, src, res.path)
    return _RESULTS["small"]
