"""Real Redis servers and clusters for tests.

Every server is a ``redis-server`` subprocess started by this module on a free
port of 127.0.0.1, in its own temporary directory; nothing here talks to a
server it did not start.  It needs nothing but the standard library, so that
the benchmarks and ``python3 dev.py demo --redis`` start their servers with it
too; the fixtures of the tests are in ``conftest.py`` beside it.

Every server is killed when the ``with`` block that started it ends, whatever
the outcome, and an ``atexit`` handler kills any that are left.  Servers run
in their own session, so a Ctrl+C in the terminal reaches the Python process,
which then shuts them down.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CLUSTER_SLOTS",
    "HOST",
    "ClusterNode",
    "Connection",
    "RedisBinaries",
    "RedisCluster",
    "RedisNotInstalledError",
    "RedisReplyError",
    "RedisServer",
    "RedisServerError",
    "Reply",
    "free_port",
    "redis_binaries",
    "scan_all",
]

HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384
_CLUSTER_BUS_PORT_OFFSET = 10000

INSTALL_HINT = (
    "Install Redis to run these tests: `apt install redis-server` on Debian or "
    "Ubuntu, `brew install redis` on macOS, or `pip install redis-server` for "
    "wheels that bundle the binaries. REDIS_SERVER_BIN and REDIS_CLI_BIN may "
    "point at binaries that are not on PATH."
)

Reply: TypeAlias = "bytes | int | list[Reply] | None"
Argument: TypeAlias = "str | bytes | int | float"

_live_processes: set[subprocess.Popen[bytes]] = set()
_temporary_directories: set[Path] = set()


class RedisServerError(RuntimeError):
    """A server could not be started, stopped or driven."""


class RedisNotInstalledError(RedisServerError):
    """``redis-server`` or ``redis-cli`` cannot be found."""


class RedisReplyError(RedisServerError):
    """Redis answered a command with an error reply."""


@dataclass(frozen=True)
class RedisBinaries:
    """Paths and versions of the Redis programs in use."""

    server: str
    cli: str
    server_version: tuple[int, int, int]
    cli_version: tuple[int, int, int]


@functools.cache
def redis_binaries() -> RedisBinaries:
    """Find ``redis-server`` and ``redis-cli``; raise RedisNotInstalledError."""
    server = _find_binary("redis-server", "REDIS_SERVER_BIN", "REDIS_SERVER_PATH")
    cli = _find_binary("redis-cli", "REDIS_CLI_BIN", "REDIS_CLI_PATH")
    return RedisBinaries(server, cli, _version(server), _version(cli))


def _find_binary(name: str, variable: str, wheel_attribute: str) -> str:
    path = os.environ.get(variable)
    if path:
        if not os.access(path, os.X_OK):
            raise RedisNotInstalledError(f"{variable}={path} is not a program.")
        return path
    path = shutil.which(name) or _wheel_binary(wheel_attribute)
    if path is None:
        raise RedisNotInstalledError(f"{name} was not found on PATH. {INSTALL_HINT}")
    return path


def _wheel_binary(attribute: str) -> str | None:
    try:
        module = importlib.import_module("redis_server")
    except ImportError:
        return None
    path = getattr(module, attribute, None)
    return path if isinstance(path, str) else None


def _version(binary: str) -> tuple[int, int, int]:
    output = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", output)
    if match is None:
        raise RedisNotInstalledError(f"cannot read the version of {binary}: {output!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that is free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _free_cluster_port() -> int:
    """Return a free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        bus_port = port + _CLUSTER_BUS_PORT_OFFSET
        if bus_port <= 65535 and _port_is_free(bus_port):
            return port
    raise RedisServerError("no free port pair for a cluster node")


class Connection:
    """A minimal RESP2 connection to a server on 127.0.0.1.

    Enough to drive the servers started here; not a general Redis client.
    """

    def __init__(
        self, port: int, *, password: str | None = None, timeout: float = 10.0
    ) -> None:
        self._socket = socket.create_connection((HOST, port), timeout=timeout)
        self._reader = self._socket.makefile("rb")
        try:
            if password is not None:
                self.execute("AUTH", password)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._reader.close()
        self._socket.close()

    def execute(self, *args: Argument) -> Reply:
        """Send one command and return its reply; errors raise RedisReplyError."""
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._socket.sendall(b"".join(parts))
        return self._read_reply()

    def _read_reply(self) -> Reply:
        line = self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by the server")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            data = self._reader.read(length + 2)
            if len(data) != length + 2:
                raise ConnectionError("connection closed by the server")
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read_reply() for _ in range(count)]
        raise ConnectionError(f"unexpected reply from the server: {line!r}")


def _kill_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a server started in its own session, and its children."""
    if process.returncode is None:
        # Not reaped yet, so its pid, which is also its group id, is still ours.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _text(reply: Reply) -> str:
    if not isinstance(reply, bytes):
        raise RedisServerError(f"expected a string reply, got {reply!r}")
    return reply.decode()


def _info_fields(reply: Reply) -> dict[str, str]:
    fields = {}
    for line in _text(reply).splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields[key] = value
    return fields


class RedisServer:
    """A ``redis-server`` subprocess on 127.0.0.1, in its own temporary directory.

    By default the server keeps nothing on disk.  With ``persistent=True`` it
    appends every write to its AOF with fsync, so data survives ``kill()``, and
    ``stop()`` also writes an RDB snapshot.  The port and directory never change
    once the server has started, so ``restart()`` brings back the same server.
    """

    host = HOST

    def __init__(
        self,
        *,
        persistent: bool = False,
        password: str | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        start: bool = True,
    ) -> None:
        """Create the server and, unless ``start`` is false, start it.

        Without ``port``, a free port is picked, and picked again if another
        process takes it first.  ``extra_args`` are appended to the
        ``redis-server`` command line; they must not change the port,
        directory, logging or daemonization.
        """
        self.binaries = redis_binaries()
        self.persistent = persistent
        self.password = password
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._port_is_final = port is not None
        self._port = self._pick_port() if port is None else port
        self.directory = Path(tempfile.mkdtemp(prefix="redis-server-"))
        _temporary_directories.add(self.directory)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._paused_until = 0.0
        self._closed = False
        if start:
            try:
                self.start()
            except BaseException:
                self.close()
                raise

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self._port

    @property
    def pid(self) -> int | None:
        """The process id, or None after ``stop()`` or ``kill()``."""
        return None if self._process is None else self._process.pid

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        """The file that receives the server's log, across restarts."""
        return self.directory / "redis.log"

    def url(self, db: int = 0) -> str:
        """Return a ``redis://`` URL for this server, with its password if any."""
        credentials = ""
        if self.password is not None:
            credentials = ":" + urllib.parse.quote(self.password, safe="") + "@"
        return f"redis://{credentials}{self.host}:{self.port}/{db}"

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def execute(self, *args: Argument, timeout: float = 10.0) -> Reply:
        """Run one command on a new connection and return the decoded reply.

        Error replies raise RedisReplyError.  Binary safe, unlike ``cli()``.
        Per-connection state, such as what WAIT waits for, is lost between
        calls; use ``connect()`` for that.
        """
        with self.connect(timeout) as connection:
            return connection.execute(*args)

    def connect(self, timeout: float = 10.0) -> Connection:
        """Open a connection, authenticated if the server has a password."""
        self._check_running()
        return Connection(self.port, password=self.password, timeout=timeout)

    def cli(self, *args: str, timeout: float = 30.0) -> str:
        """Run ``redis-cli`` against this server and return its output.

        The trailing newline is removed.  Raises RedisServerError with the
        error output if redis-cli fails or (with redis-cli 7 or later) if Redis
        replies with an error.
        """
        self._check_running()
        command = [self.binaries.cli, "-h", self.host, "-p", str(self.port)]
        if self.binaries.cli_version >= (7, 0, 0):
            command.append("-e")
        env = None
        if self.password is not None:
            env = {**os.environ, "REDISCLI_AUTH": self.password}
        result = subprocess.run(
            [*command, *args],
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        stdout = result.stdout.decode(errors="surrogateescape")
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()
            raise RedisServerError(
                f"redis-cli {' '.join(args)} failed on port {self.port}: "
                f"{stderr or stdout.strip()}"
            )
        return stdout.removesuffix("\n")

    def start(self, *, wait: bool = True) -> None:
        """Start the server if it is not running, by default waiting until ready."""
        if self.is_running:
            return
        if self._closed:
            raise RedisServerError(f"{self!r} was closed")
        self._reap()
        self._launch()
        if wait:
            self.wait_until_ready()

    def wait_until_ready(self) -> None:
        """Wait until the server answers PING and has finished loading its data.

        Raises RedisServerError, with the end of the server's log, if the server
        exits or is not ready within ``startup_timeout`` seconds.
        """
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.002
        relaunches = 0
        while not self._is_ready():
            process = self._process
            if process is None:
                raise RedisServerError(f"{self!r} was not started")
            if process.poll() is not None:
                self._reap()
                if not self._port_is_final and relaunches < 5 and self._lost_port():
                    relaunches += 1
                    self._port = self._pick_port()
                    self._launch()
                    continue
                raise RedisServerError(
                    f"redis-server on port {self.port} exited with code "
                    f"{process.returncode} while starting:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RedisServerError(
                    f"redis-server on port {self.port} was not ready after "
                    f"{self.startup_timeout} s:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        self._port_is_final = True

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down and wait for it to exit.

        Sends SHUTDOWN SAVE to a persistent server and SHUTDOWN NOSAVE to any
        other (SIGTERM while a pause would hold the command back), then
        SIGKILLs the server if it is still alive after ``timeout`` seconds.
        The directory is kept, so ``start()`` brings the same server back.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            if time.monotonic() < self._paused_until:
                process.terminate()
            else:
                self._send_shutdown(process, timeout)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_process_group(process)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server, as in a crash, and wait for it to die.

        Its forked children (a background save, say) are killed too.
        """
        process = self._process
        if process is not None:
            _kill_process_group(process)
            self._reap()

    def restart(self) -> None:
        """Stop the server and start it again on the same port and directory.

        A persistent server reloads its data; this returns once it has.
        """
        self.stop()
        self.start()

    def pause(self, seconds: float) -> None:
        """Make the server hold back every client command for ``seconds``.

        Uses CLIENT PAUSE (mode ALL), so the server looks unresponsive while
        connections stay open.  Returns at once; the pause runs on its own.
        """
        args: list[Argument] = ["CLIENT", "PAUSE", max(1, round(seconds * 1000))]
        if self.binaries.server_version >= (6, 2, 0):
            args.append("ALL")
        self.execute(*args)
        self._paused_until = time.monotonic() + seconds

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """Stop the server for the duration of a ``with`` block, then start it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        """Kill the server and delete its directory.  Safe to call repeatedly."""
        self._closed = True
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)
        _temporary_directories.discard(self.directory)

    def _check_running(self) -> None:
        # Never send commands to a port this server no longer holds.
        if not self.is_running:
            raise RedisServerError(f"{self!r} is not running")

    def _pick_port(self) -> int:
        return free_port()

    def _ports(self) -> tuple[int, ...]:
        return (self.port,)

    def _command(self) -> list[str]:
        version = self.binaries.server_version
        command = [
            self.binaries.server,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--logfile", "",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.persistent:
            command += ["--appendfsync", "always"]
            if version >= (7, 0, 0):
                command += ["--shutdown-on-sigterm", "save"]
        if version >= (7, 0, 0):
            command += ["--enable-debug-command", "yes"]
        if self.password is not None:
            command += ["--requirepass", self.password]
        return command + list(self.extra_args)

    def _launch(self) -> None:
        for _ in range(20):
            busy = [port for port in self._ports() if not _port_is_free(port)]
            if not busy:
                break
            if self._port_is_final:
                raise RedisServerError(
                    f"cannot start redis-server: port {busy[0]} is in use"
                )
            self._port = self._pick_port()
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                self._command(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _live_processes.add(self._process)

    def _log_since_launch(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _lost_port(self) -> bool:
        return "already in use" in self._log_since_launch()

    def _is_ready(self) -> bool:
        process = self._process
        if process is None or process.poll() is not None:
            return False
        if "Ready to accept connections" not in self._log_since_launch():
            return False
        try:
            with Connection(self.port, password=self.password, timeout=2.0) as conn:
                conn.execute("PING")
                info = _info_fields(conn.execute("INFO"))
        except (OSError, RedisServerError):
            return False
        return info.get("process_id") == str(process.pid) and info.get("loading") == "0"

    def _send_shutdown(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        mode = "SAVE" if self.persistent else "NOSAVE"
        try:
            self.execute("SHUTDOWN", mode, timeout=timeout)
        except ConnectionError:
            return
        except (OSError, RedisServerError):
            process.terminate()

    def _reap(self) -> None:
        process = self._process
        if process is not None:
            process.wait()
            _live_processes.discard(process)
            self._process = None
            self._paused_until = 0.0


class ClusterNode(RedisServer):
    """A cluster-enabled ``redis-server``, member of a RedisCluster."""

    def __init__(
        self,
        *,
        node_timeout_ms: int = 2000,
        startup_timeout: float = 10.0,
        start: bool = True,
    ) -> None:
        """Create the node; its cluster config lives in ``nodes.conf``."""
        self._node_id: str | None = None
        super().__init__(
            extra_args=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-replica-validity-factor", "0",
            ],
            startup_timeout=startup_timeout,
            start=start,
        )  # fmt: skip

    @property
    def node_id(self) -> str:
        """The cluster node id, which survives restarts."""
        if self._node_id is None:
            self._node_id = _text(self.execute("CLUSTER", "MYID"))
        return self._node_id

    def _pick_port(self) -> int:
        return _free_cluster_port()

    def _ports(self) -> tuple[int, ...]:
        return (self.port, self.port + _CLUSTER_BUS_PORT_OFFSET)


@dataclass(frozen=True)
class _NodeEntry:
    """One line of CLUSTER NODES."""

    node_id: str
    flags: frozenset[str]
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]
    migrating: bool

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags

    @property
    def healthy(self) -> bool:
        return not self.flags & {"fail", "handshake", "noaddr"}

    def owns(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def _parse_cluster_nodes(reply: Reply) -> list[_NodeEntry]:
    entries = []
    for line in _text(reply).splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, _, flags, primary_id = fields[:4]
        slots = []
        migrating = False
        for item in fields[8:]:
            if item.startswith("["):
                migrating = True
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        entries.append(
            _NodeEntry(
                node_id=node_id,
                flags=frozenset(flags.split(",")),
                primary_id=None if primary_id == "-" else primary_id,
                slots=tuple(slots),
                migrating=migrating,
            )
        )
    return entries


class RedisCluster:
    """A Redis Cluster of ``primaries`` primaries with replicas, on 127.0.0.1.

    Each node is a ClusterNode with its own port and directory; the cluster is
    created with ``redis-cli --cluster create``.  ``nodes`` lists every node,
    running or not.  Roles and slots are read from the running nodes each
    time, so they stay right after failovers and resharding.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas_per_primary: int = 0,
        *,
        node_timeout_ms: int = 2000,
        timeout: float = 30.0,
    ) -> None:
        """Start the nodes, create the cluster and wait until it is stable."""
        if primaries < 3:
            raise ValueError("a Redis cluster needs at least 3 primaries")
        if replicas_per_primary < 0:
            raise ValueError("replicas_per_primary cannot be negative")
        self.timeout = timeout
        self.nodes: list[ClusterNode] = []
        try:
            for _ in range(primaries * (1 + replicas_per_primary)):
                node = ClusterNode(node_timeout_ms=node_timeout_ms, start=False)
                self.nodes.append(node)
                node.start(wait=False)
            for node in self.nodes:
                node.wait_until_ready()
            self._run_cli_tool(
                "create",
                *(f"{node.host}:{node.port}" for node in self.nodes),
                "--cluster-replicas", str(replicas_per_primary),
            )  # fmt: skip
            self.wait_until_stable()
        except BaseException:
            self.stop()
            raise

    def __repr__(self) -> str:
        ports = ", ".join(str(node.port) for node in self.nodes)
        return f"<RedisCluster {HOST} ports {ports}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every running node."""
        return [(node.host, node.port) for node in self._running()]

    def url(self) -> str:
        """Return a ``redis://`` URL of a running primary."""
        return self.primaries()[0].url().removesuffix("/0")

    def primaries(self) -> list[ClusterNode]:
        """The running nodes that are primaries, in the order of ``nodes``."""
        return [node for node in self._running() if self._role(node)[0] == b"master"]

    def replicas(self, primary: ClusterNode | None = None) -> list[ClusterNode]:
        """The running replicas, or only those of ``primary``."""
        found = []
        for node in self._running():
            role = self._role(node)
            if role[0] == b"slave" and (primary is None or role[2] == primary.port):
                found.append(node)
        return found

    def keyslot(self, key: str | bytes) -> int:
        """Return the hash slot of ``key`` (CLUSTER KEYSLOT)."""
        slot = self._running()[0].execute("CLUSTER", "KEYSLOT", key)
        if not isinstance(slot, int):
            raise RedisServerError(f"unexpected CLUSTER KEYSLOT reply {slot!r}")
        return slot

    def node_for_slot(self, slot: int) -> ClusterNode:
        """Return the primary that serves ``slot``."""
        for entry in self._view():
            if entry.is_primary and entry.healthy and entry.owns(slot):
                return self._node(entry.node_id)
        raise RedisServerError(f"no primary serves slot {slot}")

    def node_for_key(self, key: str | bytes) -> ClusterNode:
        """Return the primary that serves ``key``."""
        return self.node_for_slot(self.keyslot(key))

    def slots_of(self, node: ClusterNode) -> set[int]:
        """The slots that ``node`` serves."""
        return {
            slot
            for entry in self._view()
            if entry.node_id == node.node_id
            for first, last in entry.slots
            for slot in range(first, last + 1)
        }

    def cli(self, node: ClusterNode, *args: str) -> str:
        """Run ``redis-cli`` against one node; see RedisServer.cli."""
        return node.cli(*args)

    def wait_until_stable(self, timeout: float | None = None) -> None:
        """Wait until the running nodes form a healthy cluster.

        That is: each reports ``cluster_state:ok``, sees exactly the running
        nodes as up, has no slot in migration, has its replication link up if it
        is a replica, and all agree on roles and on the slot map.
        """
        self._wait_for(self._instability, timeout, "the cluster is not stable")

    def reshard(
        self, slots: int, source: ClusterNode, target: ClusterNode
    ) -> list[int]:
        """Move ``slots`` slots and their keys from ``source`` to ``target``.

        Runs ``redis-cli --cluster reshard`` and waits until the cluster is
        stable again.  Returns the slots that moved.
        """
        self.wait_until_stable()
        before = self.slots_of(source)
        self._run_cli_tool(
            "reshard", f"{source.host}:{source.port}",
            "--cluster-from", source.node_id,
            "--cluster-to", target.node_id,
            "--cluster-slots", str(slots),
        )  # fmt: skip
        self.wait_until_stable()
        return sorted(before & self.slots_of(target))

    def migrate_slot(
        self, slot: int, target: ClusterNode, *, batch_size: int = 100
    ) -> int:
        """Move one slot, with its keys, from its owner to primary ``target``.

        Uses CLUSTER SETSLOT IMPORTING and MIGRATING, MIGRATE in batches of
        ``batch_size`` keys and SETSLOT NODE on every primary, then waits
        until the cluster is stable.  Returns how many keys moved.
        """
        source = self.node_for_slot(slot)
        if source is target:
            raise ValueError(f"slot {slot} is already served by {target!r}")
        if target not in self.primaries():
            raise ValueError(f"{target!r} is not a running primary")
        target.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        source.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        moved = 0
        while keys := source.execute("CLUSTER", "GETKEYSINSLOT", slot, batch_size):
            if not isinstance(keys, list):
                raise RedisServerError(f"unexpected GETKEYSINSLOT reply {keys!r}")
            source.execute(
                "MIGRATE", target.host, target.port, "", 0, 10000, "REPLACE", "KEYS",
                *(key for key in keys if isinstance(key, bytes)),
            )  # fmt: skip
            moved += len(keys)
        others = [node for node in self.primaries() if node not in (source, target)]
        for node in [target, source, *others]:
            node.execute("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        self.wait_until_stable()
        return moved

    def kill_primary(
        self, node: ClusterNode, timeout: float | None = None
    ) -> ClusterNode:
        """SIGKILL a primary and wait until one of its replicas replaces it.

        Returns once the cluster is stable with the promoted replica serving
        all the slots of ``node``; returns that replica.  ``node`` must have
        slots and a replica; to take down a primary without a failover, call
        ``node.kill()``.
        """
        view = {entry.node_id: entry for entry in self._view(excluding=node)}
        entry = view.get(node.node_id)
        if entry is None or not entry.is_primary or not entry.slots:
            raise ValueError(f"{node!r} is not a primary that serves slots")
        candidates = {
            replica.node_id
            for replica in view.values()
            if replica.primary_id == node.node_id and replica.healthy
        }
        if not candidates:
            raise ValueError(f"{node!r} has no replica to take over")
        slots = self.slots_of(node)
        first_slot = min(slots)
        node.kill()

        def problem() -> str | None:
            reason = self._instability()
            if reason is not None:
                return reason
            owner = self.node_for_slot(first_slot)
            if owner.node_id not in candidates:
                return f"slot {first_slot} is served by {owner!r}"
            if not slots <= self.slots_of(owner):
                return f"{owner!r} serves only part of the slots of {node!r}"
            return None

        self._wait_for(problem, timeout, f"no replica of {node!r} took over")
        return self.node_for_slot(first_slot)

    def failover(self, replica: ClusterNode, timeout: float | None = None) -> None:
        """Promote ``replica`` with CLUSTER FAILOVER and wait until stable."""
        replica.execute("CLUSTER", "FAILOVER")

        def problem() -> str | None:
            if self._role(replica)[0] != b"master":
                return f"{replica!r} is not a primary yet"
            return self._instability()

        self._wait_for(problem, timeout, f"{replica!r} did not take over")

    def stop(self) -> None:
        """Kill every node and delete their directories."""
        with contextlib.ExitStack() as stack:
            for node in self.nodes:
                stack.callback(node.close)

    def _running(self) -> list[ClusterNode]:
        running = [node for node in self.nodes if node.is_running]
        if not running:
            raise RedisServerError("no node of the cluster is running")
        return running

    def _node(self, node_id: str) -> ClusterNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise RedisServerError(f"unknown node id {node_id}")

    def _role(self, node: ClusterNode) -> list[Reply]:
        role = node.execute("ROLE")
        if not isinstance(role, list) or not role:
            raise RedisServerError(f"unexpected ROLE reply {role!r}")
        return role

    def _view(self, excluding: ClusterNode | None = None) -> list[_NodeEntry]:
        for node in self._running():
            if node is not excluding:
                return _parse_cluster_nodes(node.execute("CLUSTER", "NODES"))
        raise RedisServerError("no other node of the cluster is running")

    def _instability(self) -> str | None:
        running = self._running()
        running_ids = {node.node_id for node in running}
        signatures = set()
        for node in running:
            state = _info_fields(node.execute("CLUSTER", "INFO")).get("cluster_state")
            if state != "ok":
                return f"{node!r} reports cluster_state:{state}"
            entries = _parse_cluster_nodes(node.execute("CLUSTER", "NODES"))
            if any(entry.migrating for entry in entries):
                return f"{node!r} has a slot in migration"
            up = {entry.node_id for entry in entries if entry.healthy}
            if up != running_ids:
                return f"{node!r} sees {len(up)} nodes up, {len(running)} run"
            if any("slave" in e.flags and "myself" in e.flags for e in entries):
                info = _info_fields(node.execute("INFO", "replication"))
                if info.get("master_link_status") != "up":
                    return f"{node!r} is not in sync with its primary"
            signatures.add(
                frozenset(
                    (e.node_id, e.is_primary, e.primary_id, e.failed, e.slots)
                    for e in entries
                )
            )
        if len(signatures) > 1:
            return "the nodes disagree about roles or slots"
        return None

    def _wait_for(
        self, problem: Callable[[], str | None], timeout: float | None, what: str
    ) -> None:
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        delay = 0.01
        while True:
            try:
                reason = problem()
            except (OSError, RedisServerError) as exc:
                reason = repr(exc)
            if reason is None:
                return
            if time.monotonic() > deadline:
                raise RedisServerError(f"{what} after {limit} s: {reason}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _run_cli_tool(self, *args: str) -> None:
        command = [redis_binaries().cli, "--cluster", *args, "--cluster-yes"]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=self.timeout, check=False
        )
        if result.returncode != 0 or "[ERR]" in result.stdout:
            raise RedisServerError(
                f"redis-cli --cluster {args[0]} failed:\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )


_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b"}


def _unquote(text: str) -> bytes:
    """Decode a string quoted by redis-cli (C-style escapes, ``\\xHH``)."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise RedisServerError(f"unexpected redis-cli output: {text!r}")
    body = text[1:-1]
    result = bytearray()
    index = 0
    while index < len(body):
        char = body[index]
        if char != "\\":
            result += char.encode()
            index += 1
        elif body[index + 1] == "x":
            result.append(int(body[index + 2 : index + 4], 16))
            index += 4
        else:
            escaped = body[index + 1]
            result += _ESCAPES.get(escaped, escaped.encode())
            index += 2
    return bytes(result)


def scan_all(target: RedisServer | RedisCluster, match: str = "*") -> list[bytes]:
    """Return, sorted, every key matching ``match`` on a server or cluster.

    On a cluster, scans every primary.  Uses ``redis-cli --scan``, asking for
    quoted output so that any key comes back intact.
    """
    servers = target.primaries() if isinstance(target, RedisCluster) else [target]
    keys = []
    for server in servers:
        output = server.cli("--no-raw", "--scan", "--pattern", match)
        keys += [_unquote(line) for line in output.splitlines() if line]
    return sorted(keys)


@atexit.register
def _kill_leftovers() -> None:
    """Kill every server still running and delete their directories."""
    for process in list(_live_processes):
        _kill_process_group(process)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
    _live_processes.clear()
    for directory in list(_temporary_directories):
        shutil.rmtree(directory, ignore_errors=True)
    _temporary_directories.clear()
