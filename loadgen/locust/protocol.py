"""The framed message protocol between a Locust process and its engine sidecar.

Pure: no I/O, no clock.  Locust (gevent) and the sidecar (trio) cannot share
a process (architecture.md, "Locust and trio: the sidecar design"), so they
exchange small JSON objects over the sidecar's stdin and stdout.

Frame layout::

     0                   1                   2                   3
    +-------+-------+-------+-------+-------------------------------+
    |     length N (uint32, big-endian)  |  N bytes: UTF-8 JSON object |
    +-------+-------+-------+-------+-------------------------------+

The object has a ``type`` naming one of the message classes below; every
other key is a field of that class, checked against its type hints (a field
that is a dataclass, the client options, is an object checked the same way).
Each request carries a ``seq`` chosen by Locust, and its single final reply
(``configured``, ``connected``, ``echo_result``, ``disconnected``, ``failed``
or ``rejected``) carries the same ``seq``; ``phase`` replies come before the
final one.

The client options travel once per option set: ``configure`` gives them a
``profile`` number, and each ``connect`` names its profile.

Secrets: ``configure`` and ``connect`` carry the password towards the
sidecar only; no reply type has a field that could hold a password or a
cookie, and reprs hide it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from loadgen.options import DEFAULTS, ClientOptions
from loadgen.proto.errors import BadPacketError, LocalProtocolError

__all__ = [
    "MAX_FRAME_BYTES",
    "Command",
    "CommandRejected",
    "Configure",
    "Configured",
    "Connect",
    "Connected",
    "Disconnect",
    "Disconnected",
    "Echo",
    "EchoCompleted",
    "FrameDecoder",
    "FrameError",
    "Message",
    "PhaseCompleted",
    "Reply",
    "RequestFailed",
    "Shutdown",
    "SidecarReady",
    "TunnelEnded",
    "decode_message_untrusted",
    "encode_message",
]

#: Far above any real message (the largest is an echo result with its RTTs)
MAX_FRAME_BYTES = 1 << 20
#: | length N: uint32, big-endian |
_LENGTH = struct.Struct("!I")
#: JSON integers beyond this are refused (ids and counts are small)
_MAX_INT = 1 << 53


class FrameError(BadPacketError):
    """Bytes from the other process are not a valid frame or message."""


# -- commands: Locust -> sidecar ---------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Configure:
    """Client options for the sessions that name ``profile``, against ``url``."""

    TYPE: ClassVar[str] = "configure"
    seq: int
    profile: int
    url: str
    options: ClientOptions


@dataclass(frozen=True, kw_only=True)
class Connect:
    """Open session ``id`` with the options of ``profile`` and run phases 1 to 6."""

    TYPE: ClassVar[str] = "connect"
    seq: int
    id: int
    profile: int
    username: str
    #: None: the profile's password (a credentials file brings one per user)
    password: str | None = field(default=None, repr=False)
    #: None: the profile's group
    group: str | None = None
    #: X-CSTP-Hostname: unique per synthetic client (protocol.md §4.1)
    hostname: str = "loadgen"
    #: the identity's number (``{n}`` of a --vpn-certificate pattern)
    n: int = 0
    #: a credentials file's own certificate columns; None: the profile's pattern
    certificate: str | None = None
    sslkey: str | None = None
    key_password: str | None = field(default=None, repr=False)
    #: a credentials file's token_secret column; None: the profile's --vpn-token-secret
    token_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class Echo:
    """An ICMP echo burst through the tunnel of session ``id``."""

    TYPE: ClassVar[str] = "echo"
    seq: int
    id: int
    count: int = DEFAULTS.echo_count
    #: seconds between the probes of the burst
    spacing_s: float = DEFAULTS.echo_spacing_s
    timeout_s: float = DEFAULTS.echo_timeout_s
    #: UDP echo (port 7) instead of ICMP: the "traffic" task
    udp: bool = DEFAULTS.echo_udp
    #: payload of each probe
    payload_bytes: int = DEFAULTS.echo_size


@dataclass(frozen=True, kw_only=True)
class Disconnect:
    """End session ``id`` (DISCONNECT when its tunnel is up); cancels whatever it is doing."""

    TYPE: ClassVar[str] = "disconnect"
    seq: int
    id: int


@dataclass(frozen=True, kw_only=True)
class Shutdown:
    """Close every session and exit."""

    TYPE: ClassVar[str] = "shutdown"
    seq: int = 0


# -- replies: sidecar -> Locust ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SidecarReady:
    TYPE: ClassVar[str] = "ready"
    pid: int
    #: the URL of this sidecar's Prometheus metrics (None: not served)
    metrics: str | None = None


@dataclass(frozen=True, kw_only=True)
class Configured:
    TYPE: ClassVar[str] = "configured"
    seq: int
    profile: int


@dataclass(frozen=True, kw_only=True)
class PhaseCompleted:
    """One phase of a connect ended; ``fallback`` set: DTLS fell back to CSTP."""

    TYPE: ClassVar[str] = "phase"
    seq: int
    id: int
    name: str
    seconds: float
    fallback: str | None = None


@dataclass(frozen=True, kw_only=True)
class Connected:
    TYPE: ClassVar[str] = "connected"
    seq: int
    id: int
    channel: str
    #: the whole connect (the engine's ``connect_time``: phases that succeeded)
    seconds: float


@dataclass(frozen=True, kw_only=True)
class RequestFailed:
    """The request ``seq`` failed; ``phase``/``reason`` from loadgen.failures."""

    TYPE: ClassVar[str] = "failed"
    seq: int
    id: int
    phase: str
    reason: str
    message: str


@dataclass(frozen=True, kw_only=True)
class EchoCompleted:
    TYPE: ClassVar[str] = "echo_result"
    seq: int
    id: int
    channel: str
    sent: int
    received: int
    rtts_s: tuple[float, ...] = ()
    #: payload of each probe (bytes echoed = received * payload_bytes)
    payload_bytes: int = 56


@dataclass(frozen=True, kw_only=True)
class Disconnected:
    TYPE: ClassVar[str] = "disconnected"
    seq: int
    id: int


@dataclass(frozen=True, kw_only=True)
class TunnelEnded:
    """Unsolicited: the tunnel of session ``id`` ended (gateway DISCONNECT, DPD, reset)."""

    TYPE: ClassVar[str] = "ended"
    id: int
    phase: str
    reason: str
    message: str


@dataclass(frozen=True, kw_only=True)
class CommandRejected:
    """The sidecar could not act on request ``seq`` (unknown or busy session, bad values)."""

    TYPE: ClassVar[str] = "rejected"
    seq: int
    message: str


Command = Configure | Connect | Echo | Disconnect | Shutdown
Reply = (
    SidecarReady
    | Configured
    | PhaseCompleted
    | Connected
    | RequestFailed
    | EchoCompleted
    | Disconnected
    | TunnelEnded
    | CommandRejected
)
Message = Command | Reply

_CLASSES: tuple[type[Message], ...] = (
    Configure,
    Connect,
    Echo,
    Disconnect,
    Shutdown,
    SidecarReady,
    Configured,
    PhaseCompleted,
    Connected,
    RequestFailed,
    EchoCompleted,
    Disconnected,
    TunnelEnded,
    CommandRejected,
)
_BY_TYPE: dict[str, type[Message]] = {cls.TYPE: cls for cls in _CLASSES}
#: the dataclasses a message may hold as a field
_NESTED: tuple[type[Any], ...] = (ClientOptions,)
#: class -> field name -> resolved type hint, computed once
_HINTS: dict[type[Any], dict[str, Any]] = {
    cls: {f.name: typing.get_type_hints(cls)[f.name] for f in fields(cls)}
    for cls in (*_CLASSES, *_NESTED)
}
_REQUIRED: dict[type[Any], frozenset[str]] = {
    cls: frozenset(
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    )
    for cls in (*_CLASSES, *_NESTED)
}


# -- values ---------------------------------------------------------------------------


class _BadValueError(Exception):
    pass


def _check_value(hint: Any, value: object) -> object:
    """``value`` as ``hint`` wants it (tuples from lists, floats from ints), or _BadValueError."""
    origin = typing.get_origin(hint)
    if origin is types.UnionType or origin is typing.Union:
        if value is None and type(None) in typing.get_args(hint):
            return None
        for arm in typing.get_args(hint):
            if arm is type(None):
                continue
            try:
                return _check_value(arm, value)
            except _BadValueError:
                pass
        raise _BadValueError(f"{type(value).__name__} is not {hint}")
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise _BadValueError(f"{type(value).__name__} is not an array")
        return tuple(_check_value(item_hint, item) for item in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise _BadValueError(f"{type(value).__name__} is not a boolean")
        return value
    if hint is int:
        # JSON true is a Python int subclass: refuse it explicitly
        if isinstance(value, bool) or not isinstance(value, int):
            raise _BadValueError(f"{type(value).__name__} is not an integer")
        if abs(value) > _MAX_INT:
            raise _BadValueError("integer out of range")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _BadValueError(f"{type(value).__name__} is not a number")
        if isinstance(value, int) and abs(value) > _MAX_INT:
            raise _BadValueError("number out of range")
        number = float(value)
        if not math.isfinite(number):
            raise _BadValueError("number is not finite")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise _BadValueError(f"{type(value).__name__} is not a string")
        return value
    if hint in _NESTED:
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise _BadValueError(f"{type(value).__name__} is not an object")
        return _build(hint, value)
    raise LocalProtocolError(f"protocol.py cannot check a field of type {hint}")


def _build(cls: type[Any], obj: Mapping[str, object]) -> Any:
    hints = _HINTS[cls]
    unknown = sorted(set(obj) - set(hints) - {"type"})
    if unknown:
        raise _BadValueError(f"unknown field {unknown[0][:40]!r}")
    missing = sorted(_REQUIRED[cls] - set(obj))
    if missing:
        raise _BadValueError(f"missing field {missing[0]!r}")
    kwargs: dict[str, Any] = {}
    for name, value in obj.items():
        if name == "type":
            continue
        try:
            kwargs[name] = _check_value(hints[name], value)
        except _BadValueError as exc:
            # never echo the value: it may be a password
            raise _BadValueError(f"field {name!r}: {exc}") from None
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the client options check themselves
        raise _BadValueError(str(exc)) from None


# -- encoding -------------------------------------------------------------------------


def encode_message(message: Message) -> bytes:
    """One frame holding ``message``.  A message that could not be decoded
    again (a NaN, an oversized frame) is our bug: LocalProtocolError."""
    cls = type(message)
    if cls not in _HINTS:
        raise LocalProtocolError(f"not a sidecar message: {cls.__name__}")
    obj: dict[str, object] = {"type": cls.TYPE}
    for name, hint in _HINTS[cls].items():
        value = getattr(message, name)
        try:
            _check_value(hint, value)
        except _BadValueError as exc:
            raise LocalProtocolError(f"{cls.TYPE}.{name}: {exc}") from None
        obj[name] = _plain(value)
    payload = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    if len(payload) > MAX_FRAME_BYTES:
        raise LocalProtocolError(f"{cls.TYPE} message of {len(payload)} bytes is too large")
    return _LENGTH.pack(len(payload)) + payload


def _plain(value: object) -> object:
    """JSON's form of a field value: arrays for tuples, objects for dataclasses."""
    if isinstance(value, tuple):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return value


# -- decoding -------------------------------------------------------------------------


def _refuse_constant(name: str) -> object:
    raise _BadValueError(f"{name} is not allowed")


def decode_message_untrusted(payload: bytes) -> Message:
    """The message in one frame's payload; raises FrameError only."""
    try:
        text = payload.decode("utf-8")
        obj = json.loads(text, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, _BadValueError) as exc:
        raise FrameError(f"frame is not UTF-8 JSON: {type(exc).__name__}") from None
    except RecursionError:
        raise FrameError("frame nests too deeply") from None
    if not isinstance(obj, dict):
        raise FrameError(f"frame holds a JSON {type(obj).__name__}, not an object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise FrameError("frame has no string 'type'")
    cls = _BY_TYPE.get(kind)
    if cls is None:
        raise FrameError(f"unknown message type {kind[:40]!r}")
    try:
        message: Message = _build(cls, obj)
    except _BadValueError as exc:
        raise FrameError(f"bad {kind} message: {exc}") from None
    except RecursionError:
        raise FrameError("frame nests too deeply") from None
    return message


class FrameDecoder:
    """Bytes in, messages out.  After a FrameError the stream cannot be
    resynchronised, so the decoder refuses further use (as h11 does)."""

    def __init__(self, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes
        self._error: FrameError | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_message_untrusted(self) -> Message | None:
        """The next complete message, or None until more bytes arrive."""
        if self._error is not None:
            raise FrameError(f"the stream is broken: {self._error}")
        try:
            return self._next()
        except FrameError as exc:
            self._error = exc
            self._buffer.clear()
            raise

    def _next(self) -> Message | None:
        if len(self._buffer) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length == 0 or length > self._max:
            # checked before the payload arrives: a hostile length costs no memory
            raise FrameError(f"frame length {length} outside 1..{self._max}")
        end = _LENGTH.size + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[_LENGTH.size : end])
        del self._buffer[:end]
        return decode_message_untrusted(payload)
