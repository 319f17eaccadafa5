"""A real headless-browser check for the static HTML pages forkrl writes (e.g. `runs/<name>/report.html`).

`check_page` opens a local file in Debian's headless Chromium, speaks the DevTools protocol to it over a
websocket (the `websocket-client` package, which the `kubernetes` dependency already installs) and
reports what a reader's browser would run into: console errors and warnings, uncaught exceptions,
requests that failed (a missing PNG next to the report), and the load state of every <img>.

The browser is started fresh for every check with a throw-away profile, its DevTools endpoint listens
on loopback only (Chromium's default; the check refuses any other address), and it is always shut down
and its process group killed, even when the check fails. `scripts/setup.sh` installs the browser
(`apt-get install chromium`) where it can.

    check = check_page(Path("runs/demo/report.html"))
    assert check.problems() == [], check.problems()
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import websocket

from forkrl.rollout.network import LOCAL_BIND_HOST

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium launcher (a shell script that execs /usr/lib/chromium/chromium, keeping the PID)."""

_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--remote-debugging-port=0",
    # Debian's launcher means to add this when /dev/shm is small, but its check breaks when /dev/shm is
    # mounted more than once (as in containers); shared memory in /tmp is safe everywhere.
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--mute-audio",
)
_LISTENING = "DevTools listening on "
_CONSOLE_LEVELS = {"error": "error", "warning": "warning", "warn": "warning", "assert": "error"}
_GATHER_JS = """({
  title: document.title,
  images: Array.from(document.images, (img) => ({
    src: img.getAttribute("src") ?? "",
    url: img.currentSrc || img.src,
    complete: img.complete,
    naturalWidth: img.naturalWidth,
    naturalHeight: img.naturalHeight,
  })),
})"""


@dataclass(frozen=True)
class ConsoleMessage:
    """A console message of level error or warning.

    `source` is "console" for the page's own console.error/warn calls (Runtime.consoleAPICalled) and the
    browser's log source ("network", "javascript", "security", ...) for messages Chromium logs itself
    (Log.entryAdded), e.g. "Failed to load resource: net::ERR_FILE_NOT_FOUND" for a missing image.
    """

    level: str
    text: str
    source: str
    url: str = ""
    line: int | None = None


@dataclass(frozen=True)
class FailedRequest:
    """A request the page made that did not complete (Network.loadingFailed)."""

    url: str
    error: str
    resource_type: str = ""


@dataclass(frozen=True)
class ImageState:
    """One <img> after the load event: `src` as written in the page, `url` as the browser resolved it."""

    src: str
    url: str
    complete: bool
    natural_width: int
    natural_height: int

    @property
    def loaded(self) -> bool:
        """The image finished loading and decoded to a non-empty picture (a broken image has width 0)."""
        return self.complete and self.natural_width > 0 and self.natural_height > 0


@dataclass
class PageCheck:
    """What headless Chromium saw while loading one page, up to its load event."""

    url: str
    title: str = ""
    console: list[ConsoleMessage] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    failed_requests: list[FailedRequest] = field(default_factory=list)
    images: list[ImageState] = field(default_factory=list)
    elapsed_s: float = 0.0

    def problems(self) -> list[str]:
        """Everything a reader would notice as broken: console errors (not warnings), uncaught exceptions,
        failed requests and images that did not load. Empty for a healthy page."""
        found = [f"console {m.source} error: {m.text}" for m in self.console if m.level == "error"]
        found += [f"uncaught exception: {e}" for e in self.exceptions]
        found += [f"failed request {r.url}: {r.error}" for r in self.failed_requests]
        found += [f"image not loaded: {i.src}" for i in self.images if not i.loaded]
        return found


class BrowserUnavailable(RuntimeError):
    """Chromium is not installed (run scripts/setup.sh as root to install it)."""


def chromium_available() -> bool:
    """Whether the Debian Chromium launcher is installed and executable."""
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


class _Stderr:
    """Drains the browser's stderr on a thread (a full pipe would stall it) and hands out its lines."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.tail: deque[str] = deque(maxlen=30)
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def devtools_url(self, deadline: float) -> str:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("chromium did not print its DevTools address in time:\n" + self.text())
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError("chromium exited before printing its DevTools address:\n" + self.text())
            if line.startswith(_LISTENING):
                return line[len(_LISTENING):].strip()

    def text(self) -> str:
        return "\n".join(self.tail)

    def join(self, timeout: float) -> None:
        """Waits for the pipe to close (every process holding it has exited)."""
        self._thread.join(timeout)


class _DevTools:
    """A minimal DevTools client on one browser websocket, with one flattened page session."""

    def __init__(self, url: str, deadline: float) -> None:
        self.deadline = deadline
        # No Origin header: Chromium refuses websocket clients that send one it was not told to allow.
        self.ws = websocket.create_connection(url, timeout=self._remaining(), suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self.session: str | None = None

    def _remaining(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the page check ran out of time")
        return remaining

    def _receive(self) -> dict[str, Any]:
        self.ws.settimeout(self._remaining())
        try:
            message: dict[str, Any] = json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException as exc:
            raise TimeoutError("the page check ran out of time waiting for chromium") from exc
        return message

    def call(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> dict[str, Any]:
        """Sends one command (to the page session unless `browser`) and returns its result; events that
        arrive meanwhile are kept in `events`, in order."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if not browser and self.session is not None:
            message["sessionId"] = self.session
        self.ws.settimeout(self._remaining())
        self.ws.send(json.dumps(message))
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, after: int = 0, match: Callable[[dict[str, Any]], bool] | None = None
                 ) -> int:
        """Index in `events` of the first page-session event named `method` (and satisfying `match`) at
        or after index `after`, reading more messages until one arrives."""
        start = after
        while True:
            for index in range(start, len(self.events)):
                event = self.events[index]
                if (event["method"] == method and event.get("sessionId") == self.session
                        and (match is None or match(event.get("params", {})))):
                    return index
            start = len(self.events)
            reply = self._receive()
            if "method" in reply:
                self.events.append(reply)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()


def _collect(check: PageCheck, events: list[dict[str, Any]], session: str | None) -> None:
    """Fills the console, exception and failed-request lists from the page session's events."""
    requests: dict[str, tuple[str, str]] = {}
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            requests[params["requestId"]] = (params["request"]["url"], params.get("type", ""))
        elif method == "Network.loadingFailed":
            url, kind = requests.get(params["requestId"], ("", ""))
            check.failed_requests.append(FailedRequest(url, params.get("errorText", ""), params.get("type", kind)))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in _CONSOLE_LEVELS:
            args = params.get("args", [])
            text = " ".join(str(a.get("value", a.get("description", a.get("type", "")))) for a in args)
            frames = params.get("stackTrace", {}).get("callFrames", [])
            top = frames[0] if frames else {}
            check.console.append(ConsoleMessage(
                _CONSOLE_LEVELS[params["type"]], text, "console", top.get("url", ""),
                top["lineNumber"] + 1 if "lineNumber" in top else None))
        elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
            entry = params["entry"]
            line = entry.get("lineNumber")
            check.console.append(ConsoleMessage(
                entry["level"], entry.get("text", ""), entry.get("source", ""), entry.get("url", ""),
                line + 1 if line is not None else None))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            description = details.get("exception", {}).get("description") or details.get("text", "")
            check.exceptions.append(description)


def _processes_mentioning(text: str) -> list[int]:
    """PIDs of the processes whose command line contains `text` (the check's unique profile path)."""
    needle = text.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _remove_singleton_folder(user_data: Path) -> None:
    """Removes the browser's $TMPDIR/org.chromium.Chromium.XXXXXX folder (its singleton socket), which it
    leaves behind when it is killed; the profile's SingletonSocket link names it."""
    with contextlib.suppress(OSError):
        folder = Path(os.readlink(user_data / "SingletonSocket")).parent
        if folder.name.startswith("org.chromium.Chromium."):
            shutil.rmtree(folder, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes], devtools: _DevTools | None, stderr: _Stderr | None,
          profile: str) -> None:
    """Closes the browser politely (it then reaps its own children), then kills whatever is left of its
    process group and any process naming its unique profile. Nothing else is touched."""
    if devtools is not None:
        with contextlib.suppress(Exception):
            devtools.ws.settimeout(5)
            devtools.ws.send(json.dumps({"id": 10**9, "method": "Browser.close", "params": {}}))
        devtools.close()
    try:
        process.wait(timeout=5 if devtools is not None else 0.1)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    # Renderers or helpers that outlived the browser still carry its process group id (it was started as a
    # session leader, so the group id is its PID).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    # The crash handlers leave the group (setsid) but name the profile in their command line; they exit
    # with the browser on their own, so this only matters when it was killed.
    for pid in _processes_mentioning(profile):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if stderr is not None:
        stderr.join(timeout=5)
    if process.stderr is not None:
        process.stderr.close()


def check_page(path: Path, timeout_s: float = 60) -> PageCheck:
    """Loads the local HTML file `path` in a fresh headless Chromium and reports what happened up to the
    page's load event (which waits for every non-lazy <img>).

    Raises FileNotFoundError for a missing page, BrowserUnavailable without /usr/bin/chromium,
    TimeoutError when the browser or the page takes longer than `timeout_s` altogether, and RuntimeError
    when the browser dies or the navigation itself fails.
    """
    page = Path(path).resolve()
    if not page.is_file():
        raise FileNotFoundError(page)
    if not chromium_available():
        raise BrowserUnavailable(f"{CHROMIUM} is not installed; scripts/setup.sh installs it (as root)")
    started = time.monotonic()
    deadline = started + timeout_s
    check = PageCheck(url=page.as_uri())
    profile = tempfile.mkdtemp(prefix="forkrl-chromium-")
    process: subprocess.Popen[bytes] | None = None
    devtools: _DevTools | None = None
    stderr: _Stderr | None = None
    try:
        # HOME and the XDG folders point into the profile, so what the browser writes there (crash database,
        # dconf, NSS database) goes with it. TMPDIR stays: the singleton socket lives there because a unix
        # socket path must stay under 108 bytes, which a profile deep in pytest's tmp_path may not.
        env = dict(os.environ, HOME=profile, XDG_CONFIG_HOME=f"{profile}/config",
                   XDG_CACHE_HOME=f"{profile}/cache", XDG_DATA_HOME=f"{profile}/data")
        process = subprocess.Popen(
            [str(CHROMIUM), *_FLAGS, f"--user-data-dir={profile}/user-data", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
            start_new_session=True,  # its own process group, so the whole browser can be killed at once
        )
        stderr = _Stderr(process.stderr)
        browser_url = stderr.devtools_url(deadline)
        host = urlparse(browser_url).hostname
        if host != LOCAL_BIND_HOST:
            raise RuntimeError(f"chromium's DevTools endpoint is not on loopback: {browser_url}")
        devtools = _DevTools(browser_url, deadline)
        target = devtools.call("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        devtools.session = devtools.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            devtools.call(f"{domain}.enable")
        navigation = devtools.call("Page.navigate", {"url": check.url})
        if navigation.get("errorText"):
            raise RuntimeError(f"chromium could not open {check.url}: {navigation['errorText']}")
        # The load event that counts is the first one after the main frame committed this page (the blank
        # page the tab opened with has a load event of its own).
        loader = navigation.get("loaderId")
        committed = devtools.wait_for(
            "Page.frameNavigated",
            match=lambda p: "parentId" not in p["frame"] and p["frame"].get("loaderId") == loader)
        devtools.wait_for("Page.loadEventFired", after=committed + 1)
        gathered = devtools.call("Runtime.evaluate", {"expression": _GATHER_JS, "returnByValue": True})
        if "exceptionDetails" in gathered:
            raise RuntimeError(f"gathering the page's images failed: {gathered['exceptionDetails']}")
        value = gathered["result"]["value"]
        check.title = value["title"]
        check.images = [
            ImageState(i["src"], i["url"], i["complete"], i["naturalWidth"], i["naturalHeight"])
            for i in value["images"]
        ]
        _collect(check, devtools.events, devtools.session)
        check.elapsed_s = time.monotonic() - started
        return check
    finally:
        if process is not None:
            _stop(process, devtools, stderr, profile)
        _remove_singleton_folder(Path(profile) / "user-data")
        shutil.rmtree(profile, ignore_errors=True)
