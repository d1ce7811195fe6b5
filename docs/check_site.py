"""Check the built site: every public name has its reference page, and pages render in a browser.

    python docs/check_site.py docs/_build/html [--screenshots DIR] [--require-browser]

1. Every name of ``__all__`` of ``fastxent``, ``fastxent.torch`` and ``fastxent.dask`` has its
   page under ``api/generated/`` (a class's page holds its public methods), with the name's
   signature on it.
2. In headless Chromium (found as ``chromium``, ``chromium-browser`` or ``google-chrome``), the
   index page and the reference page of ``cross_entropy`` load with their title, the
   navigation and (for the reference page) the function's signature, and without a console
   error, an uncaught exception or a resource that failed to load. Chromium is driven over the
   DevTools protocol with the standard library only (a minimal WebSocket client below).
   Screenshots are written with ``--screenshots``.

Without a browser the second part is skipped with a line saying so (an error with
``--require-browser``). Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import inspect
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

PUBLIC_MODULES = ("fastxent", "fastxent.torch", "fastxent.dask")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


# ------------------------------------------------------------------------------------------
# 1. Reference pages
# ------------------------------------------------------------------------------------------

def reference_problems(site: Path) -> list[str]:
    problems = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            qualified = f"{module_name}.{name}"
            page = site / "api" / "generated" / f"{qualified}.html"
            if not page.exists():
                problems.append(f"{qualified}: no reference page ({page})")
                continue
            html = page.read_text()
            if f'id="{qualified}"' not in html:
                problems.append(f"{qualified}: its page has no entry for it")
            obj = getattr(module, name)
            if inspect.isclass(obj):
                own = [k for k, v in vars(obj).items() if callable(v)
                       and (not k.startswith("_") or k == "__call__")]
                problems += [f"{qualified}.{m}: not on its class's page" for m in own
                             if f'id="{qualified}.{m}"' not in html]
    return problems


# ------------------------------------------------------------------------------------------
# 2. The browser, over the DevTools protocol
# ------------------------------------------------------------------------------------------

class WebSocket:
    """A WebSocket client for one local connection: text frames, client-masked, as RFC 6455."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlparse(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the browser closed the WebSocket handshake")
            response += chunk
        if b" 101 " not in response.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"WebSocket handshake refused: {response[:200]!r}")
        self.buffer = response.split(b"\r\n\r\n", 1)[1]

    def send(self, text: str) -> None:
        payload = text.encode()
        header = bytes([0x81])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 2 ** 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the browser closed the WebSocket")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def receive(self) -> str:
        message = b""
        while True:
            first, second = self._read(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)  # the server does not mask
            opcode = first & 0x0F
            if opcode == 0x8:
                raise ConnectionError("the browser closed the WebSocket")
            if opcode in (0x0, 0x1, 0x2):
                message += payload
                if first & 0x80:
                    return message.decode()


class Browser:
    """Headless Chromium with one page, driven over its DevTools WebSocket."""

    def __init__(self, executable: str, timeout: float = 60.0) -> None:
        self.profile = tempfile.mkdtemp(prefix="fastxent-docs-chromium-")
        self.timeout = timeout
        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", "--remote-debugging-port=0", "--window-size=1280,1000",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        endpoint = None
        deadline = time.monotonic() + timeout
        while endpoint is None and time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                raise RuntimeError(f"{executable} exited with status {self.process.returncode}")
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            endpoint = match.group(1) if match else None
        if endpoint is None:
            raise RuntimeError(f"{executable} did not open its DevTools port in {timeout} s")
        port = urlparse(endpoint).port
        targets = json.loads(_http_get(port, "/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = WebSocket(page["webSocketDebuggerUrl"], timeout)
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.receive())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == event for e in self.events):
                return
            self.events.append(json.loads(self.ws.receive()))
        raise TimeoutError(f"no {event} within {self.timeout} s")

    def open(self, url: str) -> list[str]:
        """Load ``url``; the console errors, exceptions and failed loads seen while it loads."""
        self.events = []
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        self.call("Runtime.evaluate", expression="new Promise(r => setTimeout(r, 500))",
                  awaitPromise=True)  # scripts that run after the load event
        errors = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                errors.append("console." + params["type"] + ": " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append("uncaught: " + details.get("exception", {}).get(
                    "description", details.get("text", "")))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(f"log: {params['entry']['text']} ({params['entry'].get('url', '')})")
        return errors

    def evaluate(self, expression: str) -> object:
        return self.call("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError, ConnectionError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def _http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


# What each page must show once rendered: (page, title, text of the signature or None).
PAGES = [
    ("index.html", "fastxent", None),
    ("api/generated/fastxent.cross_entropy.html", "fastxent.cross_entropy",
     "fastxent.cross_entropy(input, target, *, weight=None"),
]


def browser_problems(site: Path, executable: str, screenshots: Path | None) -> list[str]:
    problems = []
    browser = Browser(executable)
    try:
        for page, title, signature in PAGES:
            url = (site / page).resolve().as_uri()
            errors = browser.open(url)
            problems += [f"{page}: {e}" for e in errors]
            shown_title = browser.evaluate("document.title") or ""
            if not shown_title.startswith(title):
                problems.append(f"{page}: title {shown_title!r}, expected {title!r}")
            links = browser.evaluate(
                "document.querySelectorAll('nav.bd-links a, .bd-sidebar-primary a, "
                "header.bd-header a.nav-link').length")
            if not links:
                problems.append(f"{page}: no navigation links rendered")
            if signature is not None:
                text = browser.evaluate(
                    "Array.from(document.querySelectorAll('dt.sig')).map(e => e.innerText)"
                    ".join('\\n')") or ""
                if signature not in " ".join(text.split()):
                    problems.append(f"{page}: no signature {signature!r} (got {text[:200]!r})")
            if screenshots is not None:
                screenshots.mkdir(parents=True, exist_ok=True)
                browser.screenshot(screenshots / (page.replace("/", "_") + ".png"))
            print(f"browser: {page}: title {shown_title!r}, {links} navigation links, "
                  f"{len(errors)} console errors")
    finally:
        browser.close()
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the built HTML site (docs/_build/html)")
    parser.add_argument("--screenshots", type=Path, default=None)
    parser.add_argument("--require-browser", action="store_true",
                        help="fail instead of skipping the browser check without Chromium")
    args = parser.parse_args(argv)
    problems = reference_problems(args.site)
    print(f"reference pages: {len(problems)} problems")
    executable = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if executable is None:
        message = f"browser check SKIPPED: none of {', '.join(BROWSERS)} found"
        if args.require_browser:
            problems.append(message)
        print(message)
    else:
        problems += browser_problems(args.site, executable, args.screenshots)
    for problem in problems:
        print("FAILED:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
