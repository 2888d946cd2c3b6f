"""Write the intersphinx inventories that the docs link through.

The docs build runs without network access, so instead of downloading the full
inventories of Python, anyio, trio and coredis, this lists the objects the docs
refer to, with their real addresses, and writes them in Sphinx's inventory
format.
Add a line here when the docs refer to a new external object, then run
``python docs/_inventories/build.py``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# project name -> [(name, domain:role, page#anchor)]; "$" stands for the name.
INVENTORIES: dict[str, list[tuple[str, str, str]]] = {
    "Python": [
        ("collections.abc.Callable", "py:class", "library/collections.abc.html#$"),
        ("collections.abc.Iterator", "py:class", "library/collections.abc.html#$"),
        (
            "collections.abc.MutableMapping",
            "py:class",
            "library/collections.abc.html#$",
        ),
        ("collections.deque", "py:class", "library/collections.html#$"),
        ("json.dumps", "py:function", "library/json.html#$"),
        ("json.loads", "py:function", "library/json.html#$"),
        ("threading.Lock", "py:class", "library/threading.html#$"),
        ("threading.RLock", "py:class", "library/threading.html#$"),
        ("signal.signal", "py:function", "library/signal.html#$"),
        ("KeyboardInterrupt", "py:exception", "library/exceptions.html#$"),
        # Annotations name it without its module (imported for type checking).
        ("TracebackType", "py:class", "library/types.html#types.TracebackType"),
        ("types.TracebackType", "py:class", "library/types.html#$"),
        ("dict", "py:class", "library/stdtypes.html#$"),
        ("object", "py:class", "library/functions.html#$"),
        ("int", "py:class", "library/functions.html#$"),
        ("bool", "py:class", "library/functions.html#$"),
        ("str", "py:class", "library/stdtypes.html#$"),
        ("tuple", "py:class", "library/stdtypes.html#$"),
        ("BaseException", "py:exception", "library/exceptions.html#$"),
        ("ConnectionError", "py:exception", "library/exceptions.html#$"),
        ("Exception", "py:exception", "library/exceptions.html#$"),
        ("KeyError", "py:exception", "library/exceptions.html#$"),
        ("LookupError", "py:exception", "library/exceptions.html#$"),
        ("RuntimeError", "py:exception", "library/exceptions.html#$"),
        ("TimeoutError", "py:exception", "library/exceptions.html#$"),
        ("TypeError", "py:exception", "library/exceptions.html#$"),
    ],
    "anyio": [
        ("anyio.BusyResourceError", "py:exception", "api.html#$"),
        ("anyio.ClosedResourceError", "py:exception", "api.html#$"),
        ("anyio.EndOfStream", "py:exception", "api.html#$"),
        ("anyio.Event", "py:class", "api.html#$"),
        ("anyio.Event.wait", "py:method", "api.html#$"),
        ("anyio.NoEventLoopError", "py:exception", "api.html#$"),
        ("anyio.open_signal_receiver", "py:function", "api.html#$"),
        ("anyio.to_thread.run_sync", "py:function", "api.html#$"),
        ("anyio.from_thread.run", "py:function", "api.html#$"),
        ("anyio.from_thread.BlockingPortal", "py:class", "api.html#$"),
    ],
    "coredis": [
        ("coredis.Redis.from_url", "py:method", "api/clients.html#$"),
        ("coredis.RedisCluster.from_url", "py:method", "api/clients.html#$"),
    ],
    "trio": [
        (
            "trio.lowlevel.wait_task_rescheduled",
            "py:function",
            "reference-lowlevel.html#$",
        ),
        ("trio.lowlevel.TrioToken", "py:class", "reference-lowlevel.html#$"),
        ("trio.lowlevel.start_guest_run", "py:function", "reference-lowlevel.html#$"),
        ("trio.open_signal_receiver", "py:function", "reference-io.html#$"),
    ],
}
FILES = {
    "Python": "python.inv",
    "anyio": "anyio.inv",
    "trio": "trio.inv",
    "coredis": "coredis.inv",
}


def main() -> None:
    for project, entries in INVENTORIES.items():
        header = (
            "# Sphinx inventory version 2\n"
            f"# Project: {project}\n"
            "# Version: \n"
            "# The remainder of this file is compressed using zlib.\n"
        )
        body = "".join(
            f"{name} {role} 1 {uri} -\n" for name, role, uri in sorted(entries)
        )
        data = header.encode() + zlib.compress(body.encode())
        (HERE / FILES[project]).write_bytes(data)


if __name__ == "__main__":
    main()
