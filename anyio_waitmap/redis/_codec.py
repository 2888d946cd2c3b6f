"""How keys and values become bytes in Redis, and come back.

Keys are ``str``, ``bytes`` or ``int``, told apart by a tag so that ``1``,
``"1"`` and ``b"1"`` are three keys, and escaped so that no key can reach
outside its own hash tag or match a SCAN pattern it should not: every byte
outside ``[A-Za-z0-9_.~-]`` becomes ``%XX``.

Values are ``bytes`` or ``str`` by default, each coming back as itself; any
other value needs a codec. Nothing is ever unpickled: a Redis shared by many
processes must not become a way to run code in all of them.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, Protocol, TypeAlias, cast, final, runtime_checkable

#: What a key of a RedisWaitMap may be.
RedisKey: TypeAlias = "str | bytes | int"

_UNSAFE: Final = re.compile(rb"[^A-Za-z0-9_.~-]")


def escape(raw: bytes) -> str:
    """``raw`` with every byte outside ``[A-Za-z0-9_.~-]`` as ``%XX``."""
    return _UNSAFE.sub(lambda match: b"%%%02X" % match[0][0], raw).decode("ascii")


def encode_key(key: object) -> str:
    """The name of ``key`` inside the map's Redis keys.

    Raises:
        TypeError: ``key`` is not a ``str``, ``bytes`` or ``int``.
    """
    # bool is an int, but True and 1 would be one key: refused, as in a dict
    # they would collide.
    if type(key) is str:
        return "s" + escape(key.encode("utf-8", "surrogatepass"))
    if type(key) is bytes:
        return "b" + escape(key)
    if type(key) is int:
        return "i" + str(key)
    raise TypeError(
        f"a RedisWaitMap key must be a str, bytes or int, not {type(key).__name__!r}"
    )


@runtime_checkable
class Codec(Protocol):
    """Turns values into bytes for Redis and back; see :class:`JsonCodec`."""

    def encode(self, value: Any, /) -> bytes:
        """The bytes to store for ``value``; raise :exc:`TypeError` if it cannot."""
        ...

    def decode(self, data: bytes, /) -> Any:
        """The value that :meth:`encode` made ``data`` from."""
        ...


@final
class JsonCodec:
    """Values as JSON (UTF-8): what :func:`json.dumps` accepts, as
    :func:`json.loads` gives it back (a tuple comes back as a list)."""

    __slots__ = ()

    def encode(self, value: Any, /) -> bytes:
        """``value`` as compact JSON; :exc:`TypeError` if JSON cannot hold it
        (a set, an object, NaN or an infinity)."""
        try:
            return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cannot encode {value!r} as JSON: {exc}") from exc

    def decode(self, data: bytes, /) -> Any:
        """The value that :meth:`encode` made ``data`` from."""
        return json.loads(data)


# A value in Redis starts with a tag byte: what it was, so that bytes and str
# come back as themselves, and a value of another kind of map is refused.
_BYTES: Final = b"b"
_STR: Final = b"s"
_CODEC: Final = b"c"


def encode_value(value: object, codec: Codec | None) -> bytes:
    """The bytes stored for ``value``.

    Raises:
        TypeError: the value cannot be encoded (without a codec: it is not
            ``bytes`` or ``str``).
    """
    if codec is not None:
        data = cast("object", codec.encode(value))  # a codec of the user's may err
        if not isinstance(data, bytes):
            raise TypeError(
                f"{type(codec).__name__}.encode() returned "
                f"{type(data).__name__!r}, not bytes"
            )
        return _CODEC + data
    if type(value) is bytes:
        return _BYTES + value
    if type(value) is str:
        return _STR + value.encode("utf-8", "surrogatepass")
    raise TypeError(
        f"a RedisWaitMap without a codec holds bytes and str values, not "
        f"{type(value).__name__!r}: pass codec=JsonCodec() (or a codec of your own)"
    )


def decode_value(data: bytes, codec: Codec | None) -> Any:
    """The value that :func:`encode_value` made ``data`` from."""
    tag, body = data[:1], data[1:]
    if tag == _CODEC and codec is not None:
        return codec.decode(body)
    if tag == _BYTES and codec is None:
        return body
    if tag == _STR and codec is None:
        return body.decode("utf-8", "surrogatepass")
    raise ValueError(
        f"a value stored by a map with {'no codec' if tag != _CODEC else 'a codec'} "
        f"cannot be read by a map with{'out' if codec is None else ''} one"
    )
