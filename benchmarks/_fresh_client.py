"""The fresh-process client of ``connect_vs_openconnect``: one full connect with DTLS.

    python -m benchmarks._fresh_client URL CAFILE USER    (the password on stdin)

Only ``loadgen`` is imported, as in the CLI.  It prints one line, ``MARK`` and a
JSON report, when DTLS is up, then blocks the event loop on stdin on purpose, so
that nothing runs while the parent reads its /proc figures; a line on stdin lets
it log out.
"""

from __future__ import annotations

import json
import ssl
import sys
import time

import trio

from loadgen.engine.session import DownloadMode, SessionConfig, open_session
from loadgen.engine.tls import TlsOptions, build_client_context
from loadgen.engine.url import parse_gateway_url
from loadgen.proto.cstp import DisconnectReason

__all__ = ["MARK", "main"]

#: the start of the line printed once DTLS is up
MARK = "LOADGEN-DTLS-UP "


async def _connect(cfg: SessionConfig, ctx: ssl.SSLContext) -> None:
    async with open_session(cfg, ctx) as s:
        t0 = time.perf_counter()
        await s.connect()
        await s.wait_dtls()
        t1 = time.perf_counter()
        tunnel = s.tunnel
        r = tunnel.dtls.report if tunnel is not None and tunnel.dtls is not None else None
        report = {
            "connect_s": t1 - t0,
            "channel": tunnel.channel if tunnel is not None else None,
            "phases": {str(k): v for k, v in s.phases.items()},
            "dtls": None if r is None else f"{r.version} {r.cipher}",
        }
        print(MARK + json.dumps(report), flush=True)
        sys.stdin.readline()  # blocking on purpose (see the module docstring)
        await s.disconnect(DisconnectReason.USER)


def main(argv: list[str] | None = None) -> int:
    url, cafile, user = (sys.argv[1:] if argv is None else argv)[:3]
    password = sys.stdin.readline().rstrip("\n")
    tls = TlsOptions(cafile=cafile)
    cfg = SessionConfig(
        url=parse_gateway_url(url),
        username=user,
        password=password,
        tls=tls,
        hostname="loadgen-1",
        download=DownloadMode.OFF,
    )
    trio.run(_connect, cfg, build_client_context(tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
