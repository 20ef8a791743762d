"""DTLS the gateway does not offer is named: ocserv 1.1.6 with ``dtls-legacy = false``
(and ``cisco-client-compat = false``, which would turn legacy DTLS back on).

That ocserv offers PSK-only DTLS, which Python's ssl cannot do; its CONNECT
answer has no legacy DTLS session, so the tunnel stays on CSTP and the report
says why (``not_offered``), counted as an attempt and a fallback so that the
fallback ratio stays within 0 and 1.  ``--no-dtls`` is ``disabled``, not an attempt.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadgen.lab.ocserv import OcservConfig, OcservServer

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def psk_only() -> Iterator[OcservServer]:
    if shutil.which("ocserv") is None:
        pytest.skip("ocserv is not installed (scripts/install --test)")
    config = OcservConfig(
        dtls_legacy=False,
        users={"alice": "test", "bob": "test"},
        # cisco-client-compat = true turns legacy DTLS back on (ocserv 1.1.6)
        extra_lines=["cisco-client-compat = false"],
    )
    with OcservServer(config) as s:
        yield s


def _loadgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", *args],
        input="test\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _connect(server: OcservServer, *args: str) -> dict[str, Any]:
    proc = _loadgen(
        "connect", server.url, "--cafile", str(server.ca_path), "--user", "alice",
        "--password-stdin", "--json", "--echo-count", "1", *args,
    )  # fmt: skip
    assert proc.stdout, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def test_psk_only_dtls_is_reported_not_offered(psk_only: OcservServer) -> None:
    report = _connect(psk_only)
    assert report["ok"], report["error"]
    assert report["channel"] == "cstp"
    assert report["dtls"]["fallback"] == "not_offered"
    assert report["echo"]["received"] == 1


def test_no_dtls_is_reported_disabled(psk_only: OcservServer) -> None:
    report = _connect(psk_only, "--no-dtls")
    assert report["ok"], report["error"]
    assert report["dtls"]["fallback"] == "disabled"


def test_run_counts_not_offered_as_attempt_and_fallback(
    psk_only: OcservServer, tmp_path: Path
) -> None:
    summary = tmp_path / "summary.json"
    proc = _loadgen(
        "run", psk_only.url, "--cafile", str(psk_only.ca_path), "--user", "alice",
        "--credentials", _credentials(tmp_path), "--sessions", "2", "--duration", "3",
        "--no-progress", "--summary", str(summary),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(summary.read_text())
    assert report["sessions"]["established"] == 2
    assert report["dtls_fallback_ratio"] == 1.0, report


def _credentials(tmp_path: Path) -> str:
    path = tmp_path / "users.txt"
    path.write_text("alice:test\nbob:test\n")
    return str(path)
