"""Headless Chromium for the report tests, driven by Playwright.

Playwright for Python drives the system Chromium (``executable_path``; no
``playwright install``, which downloads browsers).  ``open_page(chromium, html)``
loads a file:// URL (no server), waits for the load event and returns every
``<img>``'s status, the console errors / uncaught exceptions / failed requests,
the URLs requested, and a full-page PNG screenshot.

``find_chromium()`` looks for the browser; ``ensure_chromium()`` installs
Debian's ``chromium`` with apt-get when it is missing and we are root (logged
to ``chromium-apt.log`` in the given directory), else returns None with the
reason, which the tests turn into a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Headless, no sandbox (containers run as root), nothing in the background that
# reaches the network (this network is closed).  Playwright adds its own quiet
# defaults (--hide-scrollbars, --mute-audio, --disable-extensions, ...).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
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


# --------------------------------------------------------------------------- page check
@dataclass
class PageCheck:
    images: list[dict]
    errors: list[str]
    requests: list[str]
    screenshot: bytes = field(repr=False)
    title: str = ""
    text: str = field(default="", repr=False)


# Every image decoded (complete with a natural size), read from the page itself.
_PAGE_STATE = """
() => Promise.all(Array.from(document.images).map(i => i.decode().then(() => true,
    () => false))).then(ok => ({
  title: document.title,
  text: document.body.innerText,
  images: Array.from(document.images).map((i, n) => ({
    file: i.dataset.file || '', alt: i.alt, src: i.src.slice(0, 30),
    complete: i.complete, decoded: ok[n],
    naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))}))
"""


def open_page(
    chromium: str,
    html_path: str | os.PathLike,
    width: int = 1280,
    height: int = 900,
    timeout: float = 60.0,
) -> PageCheck:
    """Load ``html_path`` from file:// in headless Chromium and report on it."""
    from playwright.sync_api import sync_playwright

    url = Path(html_path).resolve().as_uri()
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=FLAGS, timeout=timeout * 1000
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height},
                                    device_scale_factor=1)
            page.set_default_timeout(timeout * 1000)
            # Console errors include the browser's own log errors (a resource
            # that failed to load, a blocked request).
            page.on("console", lambda m: errors.append(f"console: {m.text}")
                    if m.type in ("error", "assert") else None)
            page.on("pageerror", lambda exc: errors.append(f"exception: {exc}"))
            page.on("requestfailed",
                    lambda r: errors.append(f"request failed: {r.url[:80]} {r.failure}"))
            # Playwright reports every request but data: URLs (embedded images).
            page.on("request", lambda r: requests.append(r.url[:80]))
            page.goto(url, wait_until="load")
            value = page.evaluate(_PAGE_STATE)
            shot = page.screenshot(full_page=True, type="png")
        finally:
            browser.close()
    return PageCheck(value["images"], errors, requests, shot, value["title"], value["text"])


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
