"""Where a map keeps its state in Redis: the names of its keys and channels.

Everything one map key needs is under one hash tag, ``{<map>|<key>}``, so that
every hand-over is one script on one hash slot (one shard of a Cluster). The
names of the map and of each key are escaped (see :mod:`._codec`), so no key
reaches outside its tag, and ``wm:{<map>|*`` matches the keys of one map and
nothing else:

``wm:{<map>|<key>}:v``  the stored value (a string, with the TTL of ``set``)
``wm:{<map>|<key>}:t``  the takers waiting, in the order they registered
``wm:{<map>|<key>}:w``  the other waiters
``wm:{<map>|<key>}:d``  what was handed to a registration and not yet
                        acknowledged by its process

and, once per instance of the map (per *owner*), under the map's own tag:

``wm:{<map>}:owners``        the owners that have opened the map and not closed it
``wm:{<map>}:alive:<owner>`` present while the owner's lease runs
``wm:{<map>}:keys:<owner>``  the keys the owner holds something on, and how much
``wm:{<map>}:reaping:<owner>`` taken by the process that reclaims a dead owner
``wm:{<map>}:bell:<owner>``  the owner's doorbell channel
"""

from __future__ import annotations

from typing import Final, cast, final

from ._codec import escape

PREFIX: Final = "wm"


@final
class Layout:
    """The names of one map's keys and channels."""

    __slots__ = ("map_tag", "name")

    def __init__(self, name: str) -> None:
        if not isinstance(cast("object", name), str) or not name:
            raise TypeError(f"the map's name must be a non-empty str, not {name!r}")
        self.name = name
        self.map_tag = escape(name.encode("utf-8", "surrogatepass"))

    def key(self, encoded_key: str) -> list[str]:
        """V, T, W and D of one map key, as the scripts take them."""
        base = f"{PREFIX}:{{{self.map_tag}|{encoded_key}}}"
        return [f"{base}:v", f"{base}:t", f"{base}:w", f"{base}:d"]

    def pattern(self) -> str:
        """A SCAN pattern for every key of this map, including the stored values."""
        return f"{PREFIX}:{{{self.map_tag}|*"

    def control_pattern(self) -> str:
        """A SCAN pattern for the map's own keys (owners, leases, indexes)."""
        return f"{PREFIX}:{{{self.map_tag}}}:*"

    def owners(self) -> str:
        return f"{PREFIX}:{{{self.map_tag}}}:owners"

    def alive(self, owner: str) -> str:
        return f"{PREFIX}:{{{self.map_tag}}}:alive:{owner}"

    def owned_keys(self, owner: str) -> str:
        return f"{PREFIX}:{{{self.map_tag}}}:keys:{owner}"

    def reaping(self, owner: str) -> str:
        return f"{PREFIX}:{{{self.map_tag}}}:reaping:{owner}"

    def bell_prefix(self) -> str:
        """The doorbell channels' names, without the owner."""
        return f"{PREFIX}:{{{self.map_tag}}}:bell:"
