"""The states of a DTLS association and the one table of what moves them (protocol.md §7.2).

As in ``cstp.py`` (and h11): an enum of states, an enum of triggers, and one
transition table; anything not in the table is our bug and raises
``LocalProtocolError`` naming the role, the state and the trigger.  Triggers
that leave the state as it is (receiving, sending data) are in the table too,
so an API call in the wrong state fails the same way.

Client: IDLE -connect-> WAIT_SERVER_HELLO -ServerHello-> WAIT_SERVER_FINISHED
-Finished-> ESTABLISHED.  Server: WAIT_CLIENT_HELLO -ClientHello->
WAIT_CLIENT_FINISHED -Finished-> ESTABLISHED.  A HelloVerifyRequest (§7.4)
keeps either side in its hello state.  Every state but CLOSED may terminate
(close, alert, refused handshake); the waiting states that retransmit may time out.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from loadgen.proto.dtls.session import Role
from loadgen.proto.errors import LocalProtocolError

__all__ = [
    "INITIAL_STATE",
    "RETRANSMITTING",
    "TRANSITIONS",
    "State",
    "Trigger",
    "next_state",
]


class State(enum.Enum):
    IDLE = "idle"
    WAIT_SERVER_HELLO = "wait_server_hello"
    WAIT_SERVER_FINISHED = "wait_server_finished"
    WAIT_CLIENT_HELLO = "wait_client_hello"
    WAIT_CLIENT_FINISHED = "wait_client_finished"
    ESTABLISHED = "established"
    CLOSED = "closed"


class Trigger(enum.Enum):
    """What happened; the value reads as "cannot <value>" in the error."""

    CONNECT = "connect"
    RECEIVE = "receive a datagram"
    #: client: a ServerHello that resumes our session (§7.2)
    ACCEPT_SERVER_HELLO = "accept a ServerHello"
    #: server: a ClientHello for a session we know
    ACCEPT_CLIENT_HELLO = "accept a ClientHello"
    #: the peer's Finished verified: the handshake is complete
    VERIFY_FINISHED = "verify the peer's Finished"
    SEND_APPLICATION_DATA = "send application data"
    #: the retransmission schedule ran out
    TIME_OUT = "time out"
    #: close_notify (sent or received), a fatal alert, or our refusal of the peer
    TERMINATE = "terminate"


_S, _T = State, Trigger

#: (state, trigger) -> next state; the only place a state changes
TRANSITIONS: Mapping[tuple[State, Trigger], State] = MappingProxyType(
    {
        # client
        (_S.IDLE, _T.CONNECT): _S.WAIT_SERVER_HELLO,
        (_S.IDLE, _T.TERMINATE): _S.CLOSED,
        (_S.WAIT_SERVER_HELLO, _T.RECEIVE): _S.WAIT_SERVER_HELLO,
        (_S.WAIT_SERVER_HELLO, _T.ACCEPT_SERVER_HELLO): _S.WAIT_SERVER_FINISHED,
        (_S.WAIT_SERVER_HELLO, _T.TIME_OUT): _S.CLOSED,
        (_S.WAIT_SERVER_HELLO, _T.TERMINATE): _S.CLOSED,
        (_S.WAIT_SERVER_FINISHED, _T.RECEIVE): _S.WAIT_SERVER_FINISHED,
        (_S.WAIT_SERVER_FINISHED, _T.VERIFY_FINISHED): _S.ESTABLISHED,
        (_S.WAIT_SERVER_FINISHED, _T.TIME_OUT): _S.CLOSED,
        (_S.WAIT_SERVER_FINISHED, _T.TERMINATE): _S.CLOSED,
        # server
        (_S.WAIT_CLIENT_HELLO, _T.RECEIVE): _S.WAIT_CLIENT_HELLO,
        (_S.WAIT_CLIENT_HELLO, _T.ACCEPT_CLIENT_HELLO): _S.WAIT_CLIENT_FINISHED,
        (_S.WAIT_CLIENT_HELLO, _T.TERMINATE): _S.CLOSED,
        (_S.WAIT_CLIENT_FINISHED, _T.RECEIVE): _S.WAIT_CLIENT_FINISHED,
        (_S.WAIT_CLIENT_FINISHED, _T.VERIFY_FINISHED): _S.ESTABLISHED,
        (_S.WAIT_CLIENT_FINISHED, _T.TIME_OUT): _S.CLOSED,
        (_S.WAIT_CLIENT_FINISHED, _T.TERMINATE): _S.CLOSED,
        # both
        (_S.ESTABLISHED, _T.RECEIVE): _S.ESTABLISHED,
        (_S.ESTABLISHED, _T.SEND_APPLICATION_DATA): _S.ESTABLISHED,
        (_S.ESTABLISHED, _T.TERMINATE): _S.CLOSED,
        # datagrams after the end are ignored, not an error (UDP keeps delivering)
        (_S.CLOSED, _T.RECEIVE): _S.CLOSED,
    }
)

INITIAL_STATE: Mapping[Role, State] = MappingProxyType(
    {Role.CLIENT: State.IDLE, Role.SERVER: State.WAIT_CLIENT_HELLO}
)

#: states with a flight in the air: the ones that can time out (and have a timer)
RETRANSMITTING = frozenset(s for s, t in TRANSITIONS if t is Trigger.TIME_OUT)


def next_state(role: Role, state: State, trigger: Trigger) -> State:
    """The state after ``trigger``; LocalProtocolError if the table has no such move."""
    new = TRANSITIONS.get((state, trigger))
    if new is None:
        raise LocalProtocolError(
            f"DTLS {role.value} in state {state.value}: cannot {trigger.value}"
        )
    return new
