"""Open a local HTML file in headless Chromium over its DevTools pipe and inspect what the page shows.

The browser is Debian's `chromium` (or another Chromium/Chrome on PATH),
driven with `--remote-debugging-pipe`: JSON messages separated by NUL bytes
on file descriptors 3 (commands) and 4 (replies and events), so no browser
download and no websocket library are needed. `inspect_page` loads the page,
waits for its load event, and returns what a reader would see broken: images
that did not decode, in-page links without a target, and console errors
(script exceptions, console.error calls and browser log errors such as a
resource that failed to load).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: executables tried in turn
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
#: flags for a quiet, offline, sandbox-free headless run
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-pipe",
)  # fmt: skip

#: evaluated in the loaded page: decoded images, unresolved in-page links, the section ids in order
PAGE_CHECK = """(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const links = Array.from(document.querySelectorAll('a[href^="#"]')).map(a => a.getAttribute('href').slice(1));
  return {
    images: imgs.map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
    links: links,
    unresolved: links.filter(id => !id || document.getElementById(decodeURIComponent(id)) === null),
    sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
    first_table: (document.querySelector('table') || {closest: () => null}).closest('section')?.id ?? null,
  };
})()"""


#: run by a helper process: move the two pipe ends onto fds 3 and 4 (where --remote-debugging-pipe expects
#: them), then become the browser
EXEC_ON_3_4 = (
    "import fcntl, os, sys; a, b = int(sys.argv[1]), int(sys.argv[2]); "
    "r, w = fcntl.fcntl(a, fcntl.F_DUPFD, 10), fcntl.fcntl(b, fcntl.F_DUPFD, 10); os.close(a); os.close(b); "
    "os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w); os.execvp(sys.argv[3], sys.argv[3:])"
)


class BrowserUnavailable(RuntimeError):
    """No browser on PATH, or it did not start: the caller skips."""


@dataclass
class PageReport:
    """What `inspect_page` found."""

    images: list[dict]
    links: list[str]
    unresolved: list[str]
    sections: list[str]
    first_table: str | None
    console_errors: list[str] = field(default_factory=list)


def find_browser() -> str | None:
    """The first Chromium-like executable on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class DevToolsPipe:
    """A Chromium process and its DevTools pipe: send commands, wait for replies, keep the events."""

    def __init__(self, browser: str, profile: Path, timeout: float):
        self.timeout = timeout
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        self._stderr = open(profile / "stderr.log", "wb")  # a file, so a chatty browser never blocks on a full pipe
        self.proc = subprocess.Popen(
            [sys.executable, "-c", EXEC_ON_3_4, str(cmd_r), str(out_w), browser, *FLAGS,
             f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr, pass_fds=(cmd_r, out_w),
        )  # fmt: skip
        os.close(cmd_r), os.close(out_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, tab: str | None = None) -> dict:
        """Send one command and return its result (a DevTools error raises)."""
        self._next += 1
        msg: dict = {"id": self._next, "method": method, "params": params or {}}
        if tab:
            msg["sessionId"] = tab
        try:
            os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError as e:
            raise BrowserUnavailable("the browser is not reading its DevTools pipe (it exited)") from e
        reply = self._wait(lambda m: m.get("id") == self._next)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def wait_event(self, method: str, tab: str | None = None) -> dict:
        """The first event `method` (of `tab`), kept or still to come."""
        for e in self.events:
            if e.get("method") == method and e.get("sessionId") == tab:
                return e
        return self._wait(lambda m: m.get("method") == method and m.get("sessionId") == tab)

    def _wait(self, want) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "method" in msg:
                    self.events.append(msg)
                if want(msg):
                    return msg
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._out_r], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(f"no answer from the browser within {self.timeout:.0f} s")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                err = Path(self._stderr.name).read_text(errors="replace").strip().splitlines()
                raise BrowserUnavailable(f"the browser closed its DevTools pipe ({err[-1] if err else 'no message'})")
            self._buf += chunk

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                os.write(self._cmd_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._cmd_w), os.close(self._out_r)
            self._stderr.close()


def console_errors(events: list[dict], tab: str) -> list[str]:
    """Script exceptions, console.error/assert calls and browser log entries at level error."""
    out = []
    for e in events:
        if e.get("sessionId") != tab:
            continue
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"exception: {(d.get('exception') or {}).get('description') or d.get('text')}")
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
            out.append(f"console.{p['type']}: {args}")
        elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
    return out


def inspect_page(html_path: Path, *, browser: str | None = None, timeout: float = 60.0) -> PageReport:
    """Load `html_path` in headless Chromium and report its images, in-page links, sections and console errors."""
    browser = browser or find_browser()
    if browser is None:
        raise BrowserUnavailable(f"no Chromium on PATH (tried {', '.join(BROWSERS)})")
    with tempfile.TemporaryDirectory(prefix="fp-browser-") as profile:
        pipe = DevToolsPipe(browser, Path(profile), timeout)
        try:
            try:
                target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            except (TimeoutError, BrowserUnavailable) as e:
                raise BrowserUnavailable(f"{browser} did not start: {e}") from e
            tab = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", tab=tab)
            pipe.send("Page.navigate", {"url": Path(html_path).resolve().as_uri()}, tab=tab)
            pipe.wait_event("Page.loadEventFired", tab)
            found = pipe.send(
                "Runtime.evaluate",
                {"expression": PAGE_CHECK, "awaitPromise": True, "returnByValue": True},
                tab=tab,
            )
            if "exceptionDetails" in found:
                raise RuntimeError(f"page check failed: {found['exceptionDetails'].get('text')}")
            time.sleep(0.2)  # let late log entries arrive
            pipe.send("Runtime.evaluate", {"expression": "1"}, tab=tab)
            return PageReport(**found["result"]["value"], console_errors=console_errors(pipe.events, tab))
        finally:
            pipe.close()
