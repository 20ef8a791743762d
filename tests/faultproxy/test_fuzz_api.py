"""Fuzzing the fault proxy's API parsers: hostile JSON and hostile bytes.

- ``ToxicSpec.from_json_untrusted``, ``ToxicSpec.updated_untrusted``,
  ``ProxySpec.from_json_untrusted`` and ``parse_json_untrusted``: any input gives a
  result or ``ApiError`` (a ``BadPacketError``, the ``_untrusted`` rule), never
  another exception.
- The HTTP handling: any bytes on a connection give 4xx answers (or answers to
  whatever valid requests they happen to hold) or a closed connection, never a 500
  nor a logged crash, and the server keeps serving.  Driven in memory
  (``trio.testing.memory_stream_pair``) under a MockClock, one trio run per example.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadgen.faultproxy.api import FaultProxyApi, parse_json_untrusted
from loadgen.faultproxy.metrics import FaultProxyMetrics
from loadgen.faultproxy.model import ApiError, ProxySpec, ToxicSpec
from loadgen.faultproxy.registry import ProxyRegistry
from loadgen.proto.errors import BadPacketError

KEYS = ["name", "type", "stream", "toxicity", "attributes", "listen", "upstream", "enabled"]
KEYS += ["latency", "jitter", "rate", "upstream", "downstream", "udp://127.0.0.1:0"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded, as json.loads gives them
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(KEYS)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=25,
)
# objects shaped like the real ones, with hostile values
toxic_like = st.fixed_dictionaries(
    {},
    optional={k: json_values for k in ("name", "type", "stream", "toxicity", "attributes")},
)
proxy_like = st.fixed_dictionaries(
    {}, optional={k: json_values for k in ("name", "listen", "upstream", "enabled")}
)
BASE = ToxicSpec(name="lat", type="latency", attributes={"latency": 100, "jitter": 0})
FUZZ = settings(max_examples=300, deadline=None)


def test_api_error_is_a_bad_packet_error() -> None:
    assert issubclass(ApiError, BadPacketError)


@FUZZ
@given(json_values | toxic_like)
def test_toxic_from_json_untrusted(obj: Any) -> None:
    try:
        spec = ToxicSpec.from_json_untrusted(obj)
    except ApiError as exc:
        assert exc.status == 400
        return
    json.dumps(spec.to_json(), allow_nan=False)  # what is accepted serialises back
    assert 0.0 <= spec.toxicity <= 1.0


@FUZZ
@given(json_values | toxic_like)
def test_toxic_updated_untrusted(obj: Any) -> None:
    try:
        spec = BASE.updated_untrusted(obj)
    except ApiError as exc:
        assert exc.status == 400
        return
    assert (spec.name, spec.type, spec.stream) == (BASE.name, BASE.type, BASE.stream)
    json.dumps(spec.to_json(), allow_nan=False)


@FUZZ
@given(json_values | proxy_like)
def test_proxy_from_json_untrusted(obj: Any) -> None:
    try:
        spec = ProxySpec.from_json_untrusted(obj)
    except ApiError as exc:
        assert exc.status == 400
        return
    assert spec.name and spec.listen and spec.upstream
    assert isinstance(spec.enabled, bool)


@FUZZ
@given(st.binary(max_size=512) | json_values.map(lambda v: json.dumps(v).encode()))
def test_parse_json_untrusted(body: bytes) -> None:
    try:
        parse_json_untrusted(body)
    except ApiError as exc:
        assert exc.status == 400


def test_huge_integers_are_a_400_not_a_crash() -> None:
    """Found by the fuzzer: JSON integers beyond a float's range raised OverflowError
    (an API 500) in toxicity and attribute checks."""
    big = 10**400
    for obj in ({"type": "latency", "toxicity": big}, {"type": "x", "attributes": {"a": big}}):
        try:
            ToxicSpec.from_json_untrusted(obj)
        except ApiError as exc:
            assert exc.status == 400
        else:
            raise AssertionError(obj)


# -- the HTTP handling, in memory ---------------------------------------------------

_STATUS = re.compile(rb"(?:^|\r\n)HTTP/1\.1 (\d{3}) ")
_REQUEST_HEADS = [
    b"",
    b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /proxies HTTP/1.1\r\n",
    b"POST /proxies HTTP/1.1\r\nHost: x\r\n",
    b"POST /proxies/p/toxics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
]
_BODY_TARGETS = [
    b"POST /proxies",
    b"POST /populate",
    b"POST /proxies/p/toxics",
    b"PATCH /proxies/p/toxics/lat",
    b"DELETE /proxies/p/toxics/lat",
    b"POST /proxies/nope/toxics",
]


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _exchange(api: FaultProxyApi, data: bytes) -> bytes:
    client, server = trio.testing.memory_stream_pair()
    out = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(api.handle_connection, server)
        await client.send_all(data)
        await client.send_eof()
        with trio.move_on_after(120):  # virtual: idle and request timers are 10 s
            try:
                while chunk := await client.receive_some(65536):
                    out += chunk
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        nursery.cancel_scope.cancel()
    return out


async def _serve_bytes(data: bytes) -> tuple[list[int], bytes]:
    metrics = FaultProxyMetrics()
    async with trio.open_nursery() as nursery:
        registry = ProxyRegistry(nursery, metrics)
        api = FaultProxyApi(registry, metrics)
        # a TCP proxy on loopback for the toxic endpoints to act on
        await registry.create(
            ProxySpec(name="p", listen="127.0.0.1:0", upstream="127.0.0.1:9", enabled=False)
        )
        registry.add_toxic("p", {"name": "lat", "type": "latency"})
        out = await _exchange(api, data)
        statuses = [int(s) for s in _STATUS.findall(out)]
        after = await _exchange(api, b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        nursery.cancel_scope.cancel()
    return statuses, after


def _check_bytes(data: bytes) -> None:
    errors = _Errors()
    api_log = logging.getLogger("loadgen.faultproxy.api")
    api_log.addHandler(errors)
    try:
        statuses, after = trio.run(
            _serve_bytes, data, clock=trio.testing.MockClock(autojump_threshold=0)
        )
    finally:
        api_log.removeHandler(errors)
    assert all(s < 500 for s in statuses), (statuses, data[:200])
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert after.startswith(b"HTTP/1.1 200 "), after  # the server keeps serving


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_REQUEST_HEADS), st.binary(max_size=1024))
def test_any_bytes_get_an_answer_below_500_or_a_close(head: bytes, tail: bytes) -> None:
    _check_bytes(head + tail)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_BODY_TARGETS),
    st.binary(max_size=512) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_any_body_gets_an_answer_below_500(target: bytes, body: bytes) -> None:
    request = target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    _check_bytes(request + body)


def test_the_fuzz_harness_sees_answers() -> None:
    """The harness itself: a garbage request is a 400, a good one a 200."""
    statuses, _ = trio.run(
        _serve_bytes, b"garbage\r\n\r\n", clock=trio.testing.MockClock(autojump_threshold=0)
    )
    assert statuses == [400]
    statuses, _ = trio.run(
        _serve_bytes,
        b"GET /proxies/p/toxics HTTP/1.1\r\nHost: x\r\n\r\n",
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    assert statuses == [200]
