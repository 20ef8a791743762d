"""The DTLS transition table (states.py) and DtlsConnection's use of it, both roles."""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from loadgen.proto.dtls import (
    DTLS_CIPHERS_HEADER,
    DtlsConnection,
    Role,
    State,
)
from loadgen.proto.dtls.states import (
    INITIAL_STATE,
    RETRANSMITTING,
    TRANSITIONS,
    Trigger,
    next_state,
)
from loadgen.proto.errors import LocalProtocolError
from tests.proto.dtls.dtls_testlib import events, handshake, make_pair, make_session

GCM = (DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES128-GCM")
CLIENT_ONLY = {State.IDLE, State.WAIT_SERVER_HELLO, State.WAIT_SERVER_FINISHED}
SERVER_ONLY = {State.WAIT_CLIENT_HELLO, State.WAIT_CLIENT_FINISHED}
ILLEGAL = [
    (state, trigger)
    for state, trigger in itertools.product(State, Trigger)
    if (state, trigger) not in TRANSITIONS
]


def _reachable(start: State) -> set[State]:
    seen, todo = {start}, deque([start])
    while todo:
        state = todo.popleft()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


# -- the table itself ---------------------------------------------------------------------


def test_each_role_reaches_every_state_of_its_own_and_none_of_the_other() -> None:
    client = _reachable(INITIAL_STATE[Role.CLIENT])
    server = _reachable(INITIAL_STATE[Role.SERVER])
    assert client == CLIENT_ONLY | {State.ESTABLISHED, State.CLOSED}
    assert server == SERVER_ONLY | {State.ESTABLISHED, State.CLOSED}
    assert client | server == set(State)


def test_closed_is_final_and_every_other_state_can_end() -> None:
    assert [t for s, t in TRANSITIONS if s is State.CLOSED] == [Trigger.RECEIVE]
    assert TRANSITIONS[(State.CLOSED, Trigger.RECEIVE)] is State.CLOSED
    for state in set(State) - {State.CLOSED}:
        assert TRANSITIONS[(state, Trigger.TERMINATE)] is State.CLOSED


def test_the_fast_paths_of_the_connection_agree_with_the_table() -> None:
    # connection.py tests these states by identity on the per-record paths
    sending = {s for s, t in TRANSITIONS if t is Trigger.SEND_APPLICATION_DATA}
    assert sending == {State.ESTABLISHED}
    not_receiving = {s for s in State if (s, Trigger.RECEIVE) not in TRANSITIONS}
    assert not_receiving == {State.IDLE}
    retransmitting = {
        State.WAIT_SERVER_HELLO,
        State.WAIT_SERVER_FINISHED,
        State.WAIT_CLIENT_FINISHED,
    }
    assert retransmitting == RETRANSMITTING
    assert all(TRANSITIONS[(s, Trigger.TIME_OUT)] is State.CLOSED for s in RETRANSMITTING)


@pytest.mark.parametrize(
    ("state", "trigger"), ILLEGAL, ids=[f"{s.value}-{t.name}" for s, t in ILLEGAL]
)
def test_an_illegal_transition_raises_naming_role_state_and_trigger(
    state: State, trigger: Trigger
) -> None:
    role = Role.SERVER if state in SERVER_ONLY else Role.CLIENT
    with pytest.raises(LocalProtocolError) as info:
        next_state(role, state, trigger)
    message = str(info.value)
    assert role.value in message and state.value in message and trigger.value in message


def test_the_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[(State.CLOSED, Trigger.CONNECT)] = State.IDLE  # type: ignore[index]


# -- the connection follows it -------------------------------------------------------------


def _moves(history: list[State]) -> list[tuple[State, State]]:
    return [(a, b) for a, b in itertools.pairwise(history) if a is not b]


def _assert_in_table(moves: list[tuple[State, State]]) -> None:
    for source, target in moves:
        assert any(TRANSITIONS.get((source, t)) is target for t in Trigger), (source, target)


def test_a_handshake_and_close_take_the_table_path_on_both_sides() -> None:
    client, server = make_pair(make_session(*GCM))
    history: dict[Role, list[State]] = {Role.CLIENT: [client.state], Role.SERVER: [server.state]}

    def note() -> None:
        history[Role.CLIENT].append(client.state)
        history[Role.SERVER].append(server.state)

    client.connect(0.0)
    note()
    for _ in range(10):  # one datagram at a time, noting the states after each
        moved = False
        for sender, receiver in ((client, server), (server, client)):
            for datagram in sender.datagrams_to_send(0.0):
                receiver.receive_datagram(datagram, 0.0)
                note()
                moved = True
        if not moved:
            break
    client.close()
    note()
    for datagram in client.datagrams_to_send(0.0):
        server.receive_datagram(datagram, 0.0)
    note()
    assert _moves(history[Role.CLIENT]) == [
        (State.IDLE, State.WAIT_SERVER_HELLO),
        (State.WAIT_SERVER_HELLO, State.WAIT_SERVER_FINISHED),
        (State.WAIT_SERVER_FINISHED, State.ESTABLISHED),
        (State.ESTABLISHED, State.CLOSED),
    ]
    assert _moves(history[Role.SERVER]) == [
        (State.WAIT_CLIENT_HELLO, State.WAIT_CLIENT_FINISHED),
        (State.WAIT_CLIENT_FINISHED, State.ESTABLISHED),
        (State.ESTABLISHED, State.CLOSED),
    ]
    for role in Role:
        _assert_in_table(_moves(history[role]))


def test_a_timeout_is_the_table_move_from_a_retransmitting_state() -> None:
    client, _ = make_pair(make_session(*GCM), retransmit_schedule_s=(0.0, 1.0, 2.0))
    client.connect(0.0)
    assert client.state in RETRANSMITTING and client.get_timer() == 1.0
    client.handle_timer(1.0)
    assert client.state is State.WAIT_SERVER_HELLO
    client.handle_timer(2.0)
    assert (client.state, client.get_timer()) == (State.CLOSED, None)


def _raises(call: object, *words: str) -> None:
    assert callable(call)
    with pytest.raises(LocalProtocolError) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_calls_in_the_wrong_state_raise_with_the_table_message() -> None:
    session = make_session(*GCM)
    client, server = make_pair(session)
    _raises(lambda: server.connect(0.0), "server", "wait_client_hello", "cannot connect")
    _raises(lambda: client.receive_datagram(b"x", 0.0), "client", "idle", "receive a datagram")
    _raises(lambda: client.send_application_data(b"\x00"), "idle", "send application data")
    _raises(lambda: server.send_application_data(b"\x00"), "wait_client_hello")
    client.connect(0.0)
    _raises(lambda: client.connect(0.0), "client", "wait_server_hello", "cannot connect")
    _raises(lambda: client.send_application_data(b"\x00"), "wait_server_hello")
    done_client, done_server = handshake(session)
    assert done_client.state is done_server.state is State.ESTABLISHED
    events(done_client)
    done_client.close()
    assert [type(e).__name__ for e in events(done_client)] == ["ConnectionTerminated"]
    _raises(lambda: done_client.send_application_data(b"\x00"), "closed", "send application data")
    _raises(lambda: done_client.connect(0.0), "closed", "cannot connect")
    done_client.close()  # closing twice is allowed: nothing happens
    done_client.receive_datagram(b"late", 0.0)  # and datagrams after the end are ignored
    assert (done_client.state, events(done_client)) == (State.CLOSED, [])


def test_a_failed_connect_leaves_the_state_alone() -> None:
    client = DtlsConnection(Role.CLIENT, session=make_session(*GCM), random_bytes=bytes)
    _raises(lambda: client.connect(0.0), "random_bytes")  # all-zero random refused
    assert client.state is State.IDLE
