"""Where a map keeps its state in Redis: the names of its keys and channels.

A map's keys are spread over a fixed number of *partitions* (``PARTITIONS``),
chosen by a checksum of the key. Everything of one partition is under one hash
tag, ``{<map>|<partition>}``, so it lives in one hash slot (one shard of a
Cluster): each hand-over is one script on one slot, and so is reclaiming what a
dead instance held in a partition. The names of the map and of each key are
escaped (see :mod:`._codec`): no key reaches outside its tag, and
``wm:{<map>|*`` matches the keys of one map and nothing else.

In the partition of a key (``<p>`` its number, in hexadecimal)::

    wm:{<map>|<p>}:<key>:v       the stored value (a string, with the TTL of set)
    wm:{<map>|<p>}:<key>:t       the takers waiting, in the order they registered
    wm:{<map>|<p>}:<key>:w       the other waiters
    wm:{<map>|<p>}:<key>:d       what was handed to a registration and not yet
                                 acknowledged by its process
    wm:{<map>|<p>}:owner:<o>     the keys of the partition that the instance
                                 (owner) ``<o>`` holds something on, and how much
    wm:{<map>|<p>}:bell:<o>      the owner's doorbell channel on a Cluster
                                 (sharded pub/sub: one per partition)

An encoded key starts with ``s``, ``b`` or ``i``, so it is never ``owner`` or
``bell``. Once per map, under the map's own tag::

    wm:{<map>}:owners            the owners that opened the map and did not close it
    wm:{<map>}:alive:<o>         present while the owner's lease runs
    wm:{<map>}:reaping:<o>       held by whoever reclaims what the owner left
    wm:{<map>}:bell:<o>          the owner's doorbell channel on a standalone Redis
"""

from __future__ import annotations

import zlib
from typing import Final, NamedTuple, cast, final

from ._codec import escape

PREFIX: Final = "wm"
#: How many partitions a map's keys are spread over. Every instance of a map
#: must agree on it: changing it moves keys.
PARTITIONS: Final = 64


class KeyNames(NamedTuple):
    """The Redis keys of one map key, and the prefix of its partition."""

    v: str
    t: str
    w: str
    d: str
    partition: int
    #: The partition's names start with it (``wm:{<map>|<p>}:``).
    base: str


@final
class Layout:
    """The names of one map's keys and channels."""

    __slots__ = ("map_tag", "name")

    def __init__(self, name: str) -> None:
        if not isinstance(cast("object", name), str) or not name:
            raise TypeError(f"the map's name must be a non-empty str, not {name!r}")
        self.name = name
        self.map_tag = escape(name.encode("utf-8", "surrogatepass"))

    def partition_of(self, encoded_key: str) -> int:
        """The partition of an encoded key: the same in every process."""
        return zlib.crc32(encoded_key.encode("ascii")) % PARTITIONS

    def base(self, partition: int) -> str:
        """The prefix of every name in ``partition``."""
        return f"{PREFIX}:{{{self.map_tag}|{partition:x}}}:"

    def key(self, encoded_key: str) -> KeyNames:
        """V, T, W and D of one map key (the scripts take them in that order)."""
        partition = self.partition_of(encoded_key)
        base = self.base(partition)
        head = base + encoded_key
        return KeyNames(
            f"{head}:v", f"{head}:t", f"{head}:w", f"{head}:d", partition, base
        )

    def owned_keys(self, partition: int, owner: str) -> str:
        """What ``owner`` holds something on in ``partition``: key -> count."""
        return f"{self.base(partition)}owner:{owner}"

    def partition_bell_prefix(self, partition: int) -> str:
        """The doorbell channels of ``partition``, without the owner (Cluster)."""
        return f"{self.base(partition)}bell:"

    def pattern(self) -> str:
        """A SCAN pattern for every key of this map but its control keys."""
        return f"{PREFIX}:{{{self.map_tag}|*"

    def control_pattern(self) -> str:
        """A SCAN pattern for the map's own keys (owners, leases)."""
        return f"{PREFIX}:{{{self.map_tag}}}:*"

    def owners(self) -> str:
        return f"{PREFIX}:{{{self.map_tag}}}:owners"

    def alive(self, owner: str) -> str:
        return f"{PREFIX}:{{{self.map_tag}}}:alive:{owner}"

    def reaping(self, owner: str) -> str:
        return f"{PREFIX}:{{{self.map_tag}}}:reaping:{owner}"

    def bell_prefix(self) -> str:
        """The doorbell channels, without the owner (standalone Redis)."""
        return f"{PREFIX}:{{{self.map_tag}}}:bell:"
