"""The Locust client sends each option set to its sidecar once, whoever asks first.

Users spawned together all ask for their option set at the same moment; the
first sends ``configure`` and the others wait for its answer (greenlets, no
sidecar: the request is a stand-in that answers after a pause).
"""

from __future__ import annotations

from typing import Any

import gevent  # type: ignore[import-untyped]

from loadgen.locust import protocol as wire
from loadgen.locust.client import SidecarClient
from loadgen.options import ClientOptions


def _client(answer: type[wire.Message]) -> tuple[SidecarClient, list[wire.Configure], list[Any]]:
    fired: list[Any] = []
    client = SidecarClient(lambda **event: fired.append(event))
    sent: list[wire.Configure] = []

    def request(build: Any, kind: str, sid: int, bound_s: float) -> Any:
        message = build(len(sent) + 1)
        assert isinstance(message, wire.Configure)
        sent.append(message)
        gevent.sleep(0.05)  # the sidecar builds the SSL context meanwhile
        if answer is wire.Configured:
            return wire.Configured(seq=message.seq, profile=message.profile)
        return wire.CommandRejected(seq=message.seq, message="bad CA file")

    client._request = request  # type: ignore[method-assign]
    return client, sent, fired


def test_one_configure_per_option_set_whoever_asks() -> None:
    client, sent, _ = _client(wire.Configured)
    a, b = ClientOptions(group="A"), ClientOptions(group="B")
    asks = [(a, "https://h1/"), (b, "https://h1/"), (a, "https://h1/"), (a, "https://h2/")] * 5
    greenlets = [gevent.spawn(client.configure, o, url) for o, url in asks]
    gevent.joinall(greenlets, raise_error=True)
    numbers = [g.value for g in greenlets]
    # three option sets, three frames, three distinct numbers; everyone got its own set's
    assert len(sent) == 3
    assert {(m.options, m.url): m.profile for m in sent} == {
        key: n for key, n in zip(asks, numbers, strict=True)
    }
    assert len(set(numbers)) == 3
    assert client.configure(a, "https://h1/") == numbers[0]  # answered from memory
    assert len(sent) == 3


def test_a_refused_option_set_fails_every_user_who_waited_for_it() -> None:
    client, sent, fired = _client(wire.CommandRejected)
    greenlets = [gevent.spawn(client.configure, ClientOptions(), "https://h/") for _ in range(4)]
    gevent.joinall(greenlets, raise_error=True)
    assert [g.value for g in greenlets] == [None] * 4
    assert len(sent) == 1
    # the three who waited report their failed connect here (the first one's reply does)
    assert [(e["request_type"], e["name"]) for e in fired] == [("connect", "connect")] * 3
    # a later user tries again: the file may have been fixed
    gevent.spawn(client.configure, ClientOptions(), "https://h/").join()
    assert len(sent) == 2
