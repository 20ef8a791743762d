"""A minimal AnyConnect login client on raw ``ssl`` + HTTP/1.1, for capturing what
ocserv 1.1.6 sends (tests/proto/vectors/ocserv_auth/) and checking it still does.

Deliberately not loadgen's client: the captures must not depend on the code they
are meant to check.  One TLS connection, keep-alive, the ``webvpncontext`` cookie
echoed back like openconnect does; responses are read with a size bound.
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "MAX_RESPONSE_BYTES",
    "RawResponse",
    "WireClient",
    "WireClosedError",
    "init_body",
    "normalize_head",
    "reply_body",
]

MAX_RESPONSE_BYTES = 256 * 1024
_HEAD_END = b"\r\n\r\n"
_COOKIE_RE = re.compile(r"(?i)^set-cookie: *([A-Za-z]+)=([^;\r\n]*)", re.MULTILINE)
_LENGTH_RE = re.compile(rb"(?im)^content-length: *(\d+) *\r?$")


class WireClosedError(ConnectionError):
    """ocserv closed the TLS connection (or sent an alert) before a full response."""


@dataclass(frozen=True, kw_only=True)
class RawResponse:
    head: str  # status line and headers, CRLF-separated, without the blank line
    body: bytes

    @property
    def status_line(self) -> str:
        return self.head.split("\r\n", 1)[0]

    def cookie(self, name: str) -> str | None:
        """The last non-empty value ocserv set for ``name``."""
        values = [v for n, v in _COOKIE_RE.findall(self.head) if n == name and v]
        return values[-1] if values else None


def init_body(port: int) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<config-auth client="vpn" type="init" aggregate-auth-version="2">'
        '<version who="vpn">v9.01</version><device-id>linux-64</device-id>'
        f"<group-access>https://127.0.0.1:{port}/</group-access></config-auth>"
    ).encode()


def reply_body(*, username: str | None = None, password: str | None = None) -> bytes:
    fields = ""
    if username is not None:
        fields += f"<username>{username}</username>"
    if password is not None:
        fields += f"<password>{password}</password>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<config-auth client="vpn" type="auth-reply" aggregate-auth-version="2">'
        '<version who="vpn">v9.01</version><device-id>linux-64</device-id>'
        f"<auth>{fields}</auth></config-auth>"
    ).encode()


def normalize_head(head: str, *, server_sha1: str) -> str:
    """Cookie values -> ``<redacted>``; the per-run server certificate SHA-1 in
    ``webvpnc`` -> a placeholder; the rekey countdown -> a placeholder."""
    out = []
    for raw in head.split("\r\n"):
        m = re.match(r"(?i)(set-cookie: *(?:webvpn|webvpncontext)=)([^;]+)(.*)", raw)
        line = f"{m.group(1)}<redacted>{m.group(3)}" if m else raw
        line = line.replace(f"sh:{server_sha1}", "sh:<server-cert-sha1>")
        out.append(re.sub(r"^(X-CSTP-Rekey-Time:) *\d+$", r"\1 <seconds>", line))
    return "\r\n".join(out)


class WireClient:
    """One TLS connection to ocserv on 127.0.0.1, optionally with a client certificate."""

    def __init__(
        self,
        port: int,
        cafile: Path,
        *,
        cert: tuple[Path, Path] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        ctx = ssl.create_default_context(cafile=str(cafile))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        self.port = port
        self._context_cookie: str | None = None
        self._buf = b""
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        try:
            self._tls = ctx.wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._tls.close()

    def post(self, path: str, body: bytes) -> RawResponse:
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            "User-Agent: Open AnyConnect VPN Agent v9.01",
            "X-Transcend-Version: 1",
            "X-Aggregate-Auth: 1",
            "X-AnyConnect-Platform: linux-64",
            "Content-Type: application/x-www-form-urlencoded",
            f"Content-Length: {len(body)}",
        ]
        if self._context_cookie is not None:
            lines.append(f"Cookie: webvpncontext={self._context_cookie}")
        return self._exchange(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def get(self, path: str) -> RawResponse:
        """GET, as openconnect falls back to after a bodiless 401 on the XML POST."""
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            "User-Agent: Open AnyConnect VPN Agent v9.01\r\n"
            "X-Transcend-Version: 1\r\nX-Aggregate-Auth: 1\r\n\r\n"
        )
        return self._exchange(request.encode())

    def connect_tunnel(self, session_cookie: str) -> RawResponse:
        """CONNECT /CSCOSSLC/tunnel; only the head of the answer is read."""
        request = (
            "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\n"
            "User-Agent: Open AnyConnect VPN Agent v9.01\r\n"
            f"Cookie: webvpn={session_cookie}\r\n"
            "X-CSTP-Version: 1\r\n"
            "X-CSTP-Hostname: loadgen-capture\r\n"
            "X-CSTP-MTU: 1400\r\n"
            "X-CSTP-Address-Type: IPv4\r\n\r\n"
        )
        return self._exchange(request.encode(), head_only=True)

    def _exchange(self, request: bytes, *, head_only: bool = False) -> RawResponse:
        self._tls.sendall(request)
        data = self._buf
        while True:
            head, sep, rest = data.partition(_HEAD_END)
            if sep:
                m = _LENGTH_RE.search(head)
                length = 0 if head_only or m is None else int(m.group(1))
                if length > MAX_RESPONSE_BYTES:
                    raise WireClosedError(f"response body of {length} bytes is too large")
                if len(rest) >= length:
                    self._buf = rest[length:]
                    response = RawResponse(head=head.decode("latin-1"), body=rest[:length])
                    context = response.cookie("webvpncontext")
                    if context is not None:
                        self._context_cookie = context
                    return response
            if len(data) > MAX_RESPONSE_BYTES:
                raise WireClosedError("response too large")
            try:
                chunk = self._tls.recv(65536)
            except (ssl.SSLError, OSError) as exc:
                raise WireClosedError(f"connection closed: {exc}") from exc
            if not chunk:
                raise WireClosedError("connection closed before a full response")
            data += chunk
