"""A TLS server on 127.0.0.1 whose every answer a test scripts.

It speaks ocserv 1.1.6's bytes (protocol.md §2.4, §2.6, §4.3, §5) by default and
lets a test replace any step with hostile input: malformed XML, huge headers,
garbage frames, stalls.  It is a test double for the engine's error paths; the
real proof of interoperability is the ocserv interop suite.
"""

from __future__ import annotations

import hashlib
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h11
import trio

from loadgen.proto.packets import build_icmp_echo_reply, parse_icmp_untrusted, parse_ipv4_untrusted

FORM_USERNAME = b"""<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-request">
<version who="sg">0.1(1)</version>
<auth id="main">
<message>Please enter your username.</message>
<form method="post" action="/auth">
<input type="text" name="username" label="Username:" />
<select name="group_list" label="Group:">
<option value="group1">group1</option>
<option value="group2">Group Two</option>
</select>
</form></auth>
</config-auth>
"""

FORM_PASSWORD = b"""<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-request">
<version who="sg">0.1(1)</version>
<auth id="main">
<message>Please enter your password.</message>
<form method="post" action="/auth">
<input type="password" name="password" label="Password:" />
</form></auth>
</config-auth>
"""

CERT_REQUEST = b"""<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-request" aggregate-auth-version="2">
<opaque is-for="sg"><tunnel-group>DefaultWEBVPNGroup</tunnel-group></opaque>
<client-cert-request/>
</config-auth>
"""

FORM_PASSWORD_FAILED = FORM_PASSWORD.replace(
    b"Please enter your password.", b"Login failed.\nPlease enter your password."
)

PROFILE = b"<?xml version='1.0'?><AnyConnectProfile><ServerList/></AnyConnectProfile>\n"


def success_xml(profile_sha1: str) -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<config-auth client="vpn" type="complete">\n'
        b'<version who="sg">0.1(1)</version>\n'
        b'<auth id="success">\n<title>SSL VPN Service</title></auth>'
        b'<config client="vpn" type="private"><vpn-profile-manifest><vpn rev="1.0">'
        b'<file type="profile" service-type="user"><uri>/profiles/profile.xml</uri>'
        b'<hash type="sha1">' + profile_sha1.encode() + b"</hash></file></vpn>"
        b"</vpn-profile-manifest>\n</config></config-auth>"
    )


COOKIE = "AJe3dh4OkvD4PyHjoQFN1wOq4k6/aGT0+PmSwdQqTJc="

CONNECT_HEADERS = [
    ("X-CSTP-Version", "1"),
    ("X-CSTP-Server-Name", "scripted"),
    ("X-CSTP-DPD", "90"),
    ("X-CSTP-Address", "10.77.63.50"),
    ("X-CSTP-Netmask", "255.255.0.0"),
    ("X-CSTP-Keepalive", "32400"),
    ("X-CSTP-Base-MTU", "1500"),
    ("X-CSTP-MTU", "1434"),
]


@dataclass
class Script:
    """What the gateway does; each field may be replaced by a test."""

    password: str = "test"
    profile: bytes = PROFILE
    profile_sha1: str | None = None
    #: raw bytes sent instead of the first form (e.g. malformed XML)
    first_response: bytes | None = None
    connect_status: bytes = b"200 CONNECTED"
    connect_headers: list[tuple[str, str]] = field(default_factory=lambda: list(CONNECT_HEADERS))
    #: bytes written right after the CONNECT response (e.g. garbage frames)
    after_connect: bytes = b""
    #: seconds to stall before answering the init POST
    stall_s: float = 0.0
    answer_echo: bool = True
    requests: list[str] = field(default_factory=list)
    disconnect_payloads: list[bytes] = field(default_factory=list)
    #: answer the first init with a 302 to this URL (an ASA load-balancing redirect)
    redirect_to: str | None = None
    #: answer the first init with ``<client-cert-request/>`` (an ASA asking for one)
    cert_request: bool = False
    #: every init body received, and how many TLS connections came
    inits: list[bytes] = field(default_factory=list)
    connections: int = 0


def _response(status: int, reason: bytes, body: bytes, headers: list[tuple[str, str]]) -> bytes:
    head = [b"HTTP/1.1 %d %s" % (status, reason)]
    head += [f"{k}: {v}".encode() for k, v in headers]
    head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def frame(ptype: int, payload: bytes) -> bytes:
    return b"STF\x01" + struct.pack("!HBB", len(payload), ptype, 0) + payload


class ScriptedGateway:
    def __init__(self, cert: Path, key: Path, script: Script) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.script = script
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    async def _handle(self, tcp: trio.SocketStream) -> None:
        self.script.connections += 1
        stream = trio.SSLStream(tcp, self.ctx, server_side=True)
        try:
            await self._serve(stream)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            ssl.SSLError,
            h11.ProtocolError,
        ):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        s = self.script
        conn = h11.Connection(h11.SERVER)
        while True:
            request, body = await self._read_request(stream, conn)
            if request is None:
                return
            target = request.target.decode()
            method = request.method.decode()
            s.requests.append(f"{method} {target}")
            if method == "CONNECT":
                answer = _response(
                    int(s.connect_status[:3]), s.connect_status[4:], b"", s.connect_headers
                )
                if s.connect_status.startswith(b"200"):
                    # a 2xx to CONNECT has no body framing: the tunnel follows
                    answer = answer.replace(b"Content-Length: 0\r\n", b"")
                await stream.send_all(answer)
                if not s.connect_status.startswith(b"200"):
                    return
                if s.after_connect:
                    await stream.send_all(s.after_connect)
                await self._tunnel(stream)
                return
            out = await self._answer(method, target, body)
            await stream.send_all(out)
            # we answer with raw bytes; walk h11 through a response to reuse it
            conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()

    async def _read_request(
        self, stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return None, b""
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _answer(self, method: str, target: str, body: bytes) -> bytes:
        s = self.script
        ctx_cookie = ("Set-Cookie", f"webvpncontext={COOKIE}; Secure; HttpOnly")
        if method == "GET" and target.startswith("/profiles"):
            return _response(200, b"OK", s.profile, [("Content-Type", "text/xml")])
        if b'type="init"' in body:
            s.inits.append(body)
            if s.redirect_to is not None and len(s.inits) == 1:
                return _response(302, b"Found", b"", [("Location", s.redirect_to)])
            if s.cert_request and len(s.inits) == 1:
                return _response(200, b"OK", CERT_REQUEST, [ctx_cookie])
            if s.stall_s:
                await trio.sleep(s.stall_s)
            if s.first_response is not None:
                return s.first_response
            return _response(200, b"OK", FORM_USERNAME, [ctx_cookie])
        if b"<username>" in body:
            return _response(200, b"OK", FORM_PASSWORD, [ctx_cookie])
        if b"<password>" in body:
            if f"<password>{s.password}</password>".encode() not in body:
                return _response(200, b"OK", FORM_PASSWORD_FAILED, [ctx_cookie])
            sha1 = s.profile_sha1 or hashlib.sha1(s.profile).hexdigest().upper()
            return _response(
                200,
                b"OK",
                success_xml(sha1),
                [ctx_cookie, ("Set-Cookie", f"webvpn={COOKIE}; Secure; HttpOnly")],
            )
        return _response(404, b"Not found", b"", [])

    async def _tunnel(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        buf = b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            while len(buf) >= 8:
                (length,) = struct.unpack_from("!H", buf, 4)
                if len(buf) < 8 + length:
                    break
                ptype, payload, buf = buf[6], buf[8 : 8 + length], buf[8 + length :]
                if ptype == 3:  # DPD-REQ
                    await stream.send_all(frame(4, payload))
                elif ptype == 5:  # DISCONNECT
                    self.script.disconnect_payloads.append(payload)
                    return
                elif ptype == 0 and self.script.answer_echo:
                    ip = parse_ipv4_untrusted(payload)
                    if ip.protocol == 1:
                        reply = build_icmp_echo_reply(ip, parse_icmp_untrusted(ip))
                        await stream.send_all(frame(0, reply))


GatewayFactory = Callable[[Script], Awaitable[ScriptedGateway]]
