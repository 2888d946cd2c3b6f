"""Worker processes for the tests: start them, follow their events, end them.

Each :class:`WorkerProcess` runs ``worker.py`` (next to this file) with
``sys.executable``; a thread reads its standard output into a queue, so that
every read here is bounded by a timeout and nothing hangs.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).resolve().parent / "worker.py"

#: The loops a worker can run, one of each kind.
LOOPS = ("asyncio", "uvloop", "trio")

#: How long a test waits for an event, unless told otherwise.
TIMEOUT = 10.0

Event = dict[str, Any]


class WorkerFailed(AssertionError):
    """A worker crashed, exited, or did not say what was expected in time."""


class WorkerProcess:
    """One ``worker.py`` process, with a map open on a Redis of the test's."""

    def __init__(
        self,
        url: str,
        name: str,
        loop: str,
        *,
        lease: float = 10.0,
        timeout: float = 5.0,
        cluster: bool = False,
        commands: list[dict[str, Any]] | None = None,
        label: str | None = None,
    ) -> None:
        self.loop = loop
        self.label = label or loop
        self.events: list[Event] = []
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.process = subprocess.Popen(
            [
                sys.executable, str(WORKER),
                "--url", url, "--name", name, "--loop", loop,
                "--lease", str(lease), "--timeout", str(timeout),
                "--commands", json.dumps(commands or []),
                *(["--cluster"] if cluster else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )  # fmt: skip
        self._reader = threading.Thread(
            target=self._read, name=f"reader of {self.label}", daemon=True
        )
        self._reader.start()
        try:
            self.ready = self.expect(lambda e: e["event"] == "ready", timeout=30)
        except BaseException:
            self.close()
            raise
        self.owner: str = self.ready["owner"]
        self.pid: int = self.process.pid

    def __repr__(self) -> str:
        return f"<worker {self.label} pid {self.process.pid}>"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "garbage", "line": line.decode(errors="replace")}
            event["_time"] = time.monotonic()  # when it arrived here
            self._queue.put(event)
        self._queue.put(None)

    # -- talking to it ---------------------------------------------------------------

    def send(self, **command: Any) -> None:
        """Send one command."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        self.process.stdin.flush()

    def _pump(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for one more event; False if none came."""
        try:
            event = self._queue.get(timeout=max(timeout, 0))
        except queue.Empty:
            return False
        if event is None:
            raise self._failure("exited")
        self.events.append(event)
        if event["event"] in ("crash", "garbage"):
            raise self._failure("crashed")
        return True

    def drain(self) -> list[Event]:
        """The events received so far, without waiting."""
        while self._pump(0):
            pass
        return self.events

    def expect(
        self, predicate: Callable[[Event], bool], timeout: float = TIMEOUT
    ) -> Event:
        """The first event (received before or within ``timeout``) that matches
        ``predicate`` and was not returned by ``expect`` before."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for index in range(checked, len(self.events)):
                event = self.events[index]
                if not event.get("_seen") and predicate(event):
                    event["_seen"] = True
                    return event
            checked = len(self.events)
            if not self._pump(deadline - time.monotonic()):
                raise self._failure(f"did not say what was expected in {timeout} s")

    def expect_tag(self, tag: str, timeout: float = TIMEOUT) -> Event:
        """The event that ends the command ``tag``."""
        return self.expect(lambda e: e.get("tag") == tag, timeout)

    def request(self, timeout: float = TIMEOUT, **command: Any) -> Event:
        """Send a command that has a tag and return the event that ends it."""
        self.send(**command)
        return self.expect_tag(command["tag"], timeout)

    def wake(self, key: str, value: str, timeout: float = TIMEOUT) -> int:
        """Wake ``key`` and return the count (0 for NoMatch)."""
        event = self.request(timeout, op="wake", key=key, value=value, tag=_tag())
        assert event["event"] == "woke", event
        return int(event["count"])

    def call(self, op: str, key: str, timeout: float = TIMEOUT, **args: Any) -> Any:
        """``set``, ``get``, ``pop`` or ``cancel``: its result."""
        event = self.request(timeout, op=op, key=key, tag=_tag(), **args)
        assert event["event"] == "done", event
        return event["result"]

    def status(self, timeout: float = TIMEOUT) -> Event:
        return self.request(timeout, op="status", tag=_tag())

    # -- ending it -------------------------------------------------------------------

    def stop(self, timeout: float = TIMEOUT) -> None:
        """Tell it to exit, and wait until it did, cleanly."""
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                self.send(op="exit")
        deadline = time.monotonic() + timeout
        with contextlib.suppress(WorkerFailed):
            while self._pump(deadline - time.monotonic()):
                pass
        try:
            code = self.process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._failure(f"did not exit within {timeout} s") from None
        if code != 0 or not any(e["event"] == "bye" for e in self.events):
            raise self._failure(f"exited with status {code}")

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(TIMEOUT)

    def pause(self) -> None:
        """SIGSTOP it."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT it."""
        os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        """Kill it if it runs, and release the pipes and files."""
        self.kill()
        self._reader.join(TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def _failure(self, what: str) -> WorkerFailed:
        recent = "\n".join(json.dumps(e) for e in self.events[-15:])
        return WorkerFailed(
            f"{self!r} {what}\n-- its last events:\n{recent}\n"
            f"-- its standard error:\n{self.stderr()}"
        )


_tags = iter(range(1 << 62))


def _tag() -> str:
    return f"t{next(_tags)}"


class Workers:
    """Starts workers for one test, and kills those left at its end."""

    def __init__(self) -> None:
        self.started: list[WorkerProcess] = []

    def start(self, url: str, name: str, loop: str, **options: Any) -> WorkerProcess:
        worker = WorkerProcess(url, name, loop, **options)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            worker.close()


@pytest.fixture
def workers() -> Iterator[Workers]:
    """Start worker processes; every one is killed when the test ends."""
    started = Workers()
    try:
        yield started
    finally:
        started.close()


def wait_until(
    condition: Callable[[], object], timeout: float = TIMEOUT, what: str = ""
) -> float:
    """Poll ``condition`` until it is true; return how long it took."""
    start = time.monotonic()
    delay = 0.002
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true after {timeout} s: {what or condition}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return time.monotonic() - start
