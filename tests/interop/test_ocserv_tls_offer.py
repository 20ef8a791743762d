"""The TLS offer of the real client against ocserv 1.1.6 configured as older gateways are.

RSA key exchange only, or AES-CBC with SHA-1 only (an older ASA's "medium"
setting): openconnect connects to both, and so must loadgen with no option.
A restricted offer that shares nothing with the gateway fails as
``tls_handshake`` with a message that says so, never as ``closed``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from loadgen.lab.ocserv import OcservConfig, OcservServer

pytestmark = pytest.mark.interop

PRIORITIES = {
    "rsa-key-exchange": "NORMAL:%SERVER_PRECEDENCE:%COMPAT:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+RSA",
    "aes-cbc-sha1": (
        "NORMAL:%SERVER_PRECEDENCE:%COMPAT:-VERS-ALL:+VERS-TLS1.2"
        ":-CIPHER-ALL:+AES-128-CBC:+AES-256-CBC:-MAC-ALL:+SHA1"
    ),
}


def _connect(server: OcservServer, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [
            *[sys.executable, "-m", "loadgen", "connect", server.url],
            *["--cafile", str(server.ca_path), "--user", "alice", "--password-stdin"],
            *["--json", "--echo-count", "1", *args],
        ],
        input="test\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.stdout, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


@pytest.mark.parametrize("setting", sorted(PRIORITIES))
def test_older_gateway_settings_connect_with_the_default_offer(setting: str) -> None:
    if shutil.which("ocserv") is None:
        pytest.skip("ocserv is not installed (scripts/install --test)")
    config = OcservConfig(tls_priorities=PRIORITIES[setting], udp_port=None)
    with OcservServer(config) as server:
        report = _connect(server)
        assert report["ok"], report["error"]
        assert report["tls"]["version"] == "TLSv1.2"
        cipher = report["tls"]["cipher"]
        if setting == "rsa-key-exchange":
            assert not cipher.startswith(("ECDHE", "DHE")), cipher
        else:
            assert "CBC" in cipher or cipher.endswith("-SHA"), cipher
        # an offer without what the gateway takes is named, not "closed"
        refused = _connect(server, "--tls-ciphers", "ECDHE+AESGCM")
        assert not refused["ok"]
        assert refused["error"]["reason"] == "tls_handshake", refused["error"]
        assert "cipher suite" in refused["error"]["message"]
