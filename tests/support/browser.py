"""A small client of the DevTools protocol, to drive Debian's Chromium headless in the tests.

It speaks the protocol over ``--remote-debugging-pipe``: the browser reads commands on its fd 3
and writes answers and events on its fd 4, one JSON document each, ended by a NUL byte. Python's
subprocess keeps fds open but cannot renumber them, so a tiny Python step in between moves the
pipes to 3 and 4 and then becomes the browser (exec), with no shell.

Each :class:`Page` lives in a browser context of its own (an incognito profile): its own cookies,
so that tests do not share a session.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .waiting import wait_until

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",  # /dev/shm is small in containers
    "--no-proxy-server",  # the pages are on loopback; a proxy of the environment has nothing to do with them
    "--hide-scrollbars",
    "--force-color-profile=srgb",
    "--mute-audio",
    "--remote-debugging-pipe",
)
# Moves the two pipes it is given to fds 3 and 4, then execs the browser. The copies first, so
# that neither pipe is overwritten by the other; dup2 onto the same number changes nothing, so
# 3 and 4 are made inheritable explicitly.
ON_FDS_3_AND_4 = (
    "import os, sys; given = [int(fd) for fd in sys.argv[1:3]]; r, w = os.dup(given[0]), os.dup(given[1]); "
    "os.dup2(r, 3); os.dup2(w, 4); os.set_inheritable(3, True); os.set_inheritable(4, True); "
    "[os.close(fd) for fd in {*given, r, w} - {3, 4}]; os.execv(sys.argv[3], sys.argv[3:])"
)


class BrowserError(Exception):
    pass


class Browser:
    """Chromium, headless, driven over the pipe. ``with Browser() as browser: page = browser.new_page()``."""

    def __init__(self, executable: str = CHROMIUM, timeout: float = 30.0, extra_flags: Sequence[str] = ()) -> None:
        self.executable = executable
        self.timeout = timeout
        self._next_id = 0
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._answers: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._closed = False
        self._profile = Path(tempfile.mkdtemp(prefix="board-chromium-"))
        commands_read, self._commands = os.pipe()
        self._answers_pipe, answers_write = os.pipe()
        argv = [sys.executable, "-c", ON_FDS_3_AND_4, str(commands_read), str(answers_write), self.executable,
                *FLAGS, *extra_flags, f"--user-data-dir={self._profile}", "about:blank"]  # fmt: skip
        self.process = subprocess.Popen(
            argv,
            pass_fds=(commands_read, answers_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(commands_read)
        os.close(answers_write)
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read_answers, name="cdp-reader", daemon=True).start()
        threading.Thread(target=self._drain_stderr, name="cdp-stderr", daemon=True).start()
        try:
            self.version = self.send("Browser.getVersion")["product"]
        except BrowserError:
            self.close()  # the process and the profile folder go, with the error
            raise

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr = [*self._stderr[-50:], line]

    def _read_answers(self) -> None:
        buffer = b""
        with open(self._answers_pipe, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                with self._lock:
                    for raw in messages:
                        message = json.loads(raw)
                        if "id" in message:
                            self._answers[message["id"]] = message
                        else:
                            self._events.append(message)
                    self._answered.notify_all()
        with self._lock:
            self._closed = True
            self._answered.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Sends a command and waits for its answer; a protocol error is raised."""
        with self._lock:
            self._next_id += 1
            number = self._next_id
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        with self._lock:
            if not self._answered.wait_for(lambda: number in self._answers or self._closed, self.timeout):
                raise BrowserError(f"{method}: no answer within {self.timeout} s")
            if number not in self._answers:
                said = b"".join(self._stderr).decode(errors="replace")
                raise BrowserError(f"{method}: the browser went away: {said}")
            answer = self._answers.pop(number)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result", {})

    def events(self, session: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [event for event in self._events if session is None or event.get("sessionId") == session]

    def new_page(self, width: int = 1400, height: int = 900, beside: Page | None = None) -> Page:
        """A tab in a fresh browser context (cookies of its own), or in the context of ``beside``
        (its cookies, its connections), with the page, runtime and log domains on."""
        if beside is None:
            context = self.send("Target.createBrowserContext", {"disposeOnDetach": True})["browserContextId"]
        else:
            context = beside.context
        target = self.send("Target.createTarget", {"url": "about:blank", "browserContextId": context})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target, context, owns_context=beside is None)
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        page.set_size(width, height)
        return page

    def close(self) -> None:
        if self.process.poll() is None:
            with suppress(BrowserError):
                self.send("Browser.close")
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        os.close(self._commands)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    def __init__(self, browser: Browser, session: str, target: str, context: str, owns_context: bool) -> None:
        self.browser = browser
        self.session = session
        self.target = target
        self.context = context
        self.owns_context = owns_context

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def navigate(self, url: str, timeout: float = 15.0) -> None:
        """Opens ``url`` and waits until the document and its scripts are loaded."""
        answer = self.send("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise BrowserError(f"navigate to {url}: {answer['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        answer = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            thrown = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression}: {thrown}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Evaluates ``expression`` until it is truthy, and returns it; fails after ``timeout`` seconds."""

        def value() -> Any:
            try:
                return self.evaluate(expression)
            except BrowserError:
                return None  # a navigation in progress destroys the context the expression runs in

        return wait_until(value, lambda: f"{expression}\nconsole: {self.console()}", timeout)

    def center_of(self, selector: str) -> tuple[float, float]:
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if box is None:
            raise BrowserError(f"no element matches {selector}")
        return box[0], box[1]

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the middle of the element."""
        x, y = self.center_of(selector)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def type(self, selector: str, text: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", {"text": text})

    def press(self, key: str) -> None:
        """A key that is not text: Tab, Enter."""
        codes = {"Tab": 9, "Enter": 13}
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key,
                                                  "windowsVirtualKeyCode": codes[key]})  # fmt: skip

    def bring_to_front(self) -> None:
        """Makes this tab the visible one (a new tab hides the others, even headless)."""
        self.send("Page.bringToFront")

    def set_size(self, width: int, height: int = 900) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def color_scheme(self, scheme: str) -> None:
        """``light`` or ``dark``, as ``prefers-color-scheme`` tells the page."""
        self.send("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]})

    def screenshot(self, path: Path, full_page: bool = True) -> bytes:
        """A PNG of the page (all of it when ``full_page``), written to ``path``."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            params |= {"captureBeyondViewport": True, "clip": clip}
        data = base64.b64decode(self.send("Page.captureScreenshot", params)["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def console(self) -> list[str]:
        """What the page wrote to its console, its uncaught exceptions and the browser's log of it
        (a Content-Security-Policy violation is one), as lines of text."""
        lines = []
        for event in self.browser.events(self.session):
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled":
                text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
                lines.append(f"console.{params.get('type')}: {text}")
            elif event["method"] == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                lines.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif event["method"] == "Log.entryAdded":
                entry = params.get("entry", {})
                lines.append(f"log.{entry.get('level')} ({entry.get('source')}): {entry.get('text')}")
        return lines

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})
        if self.owns_context:
            self.browser.send("Target.disposeBrowserContext", {"browserContextId": self.context})


@contextmanager
def open_page(browser: Browser, width: int = 1400, height: int = 900) -> Iterator[Page]:
    page = browser.new_page(width, height)
    try:
        yield page
    finally:
        page.close()
