"""``loadgen connect``: usage errors, exit codes, and no secrets in the report."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import trio

from loadgen.cli.connect import run_connect
from loadgen.cli.main import build_parser
from loadgen.engine.profile import SessionProfile
from loadgen.options import Front, from_namespace
from tests.helpers.certs import ServerPki, make_server_pki
from tests.helpers.scripted_gateway import COOKIE, Script, ScriptedGateway


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_explains_the_options() -> None:
    proc = _cli("connect", "--help")
    assert proc.returncode == 0
    for option in (
        "--password-stdin",
        "--servercert",
        "--insecure",
        "--download",
        "--echo",
        "--json",
    ):
        assert option in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["connect", "--cafile", "ca.pem"],
        ["connect", "http://gw/", "--password", "x"],
        ["connect", "https://gw/", "--password", "x", "--servercert", "md5:00"],
        ["connect", "https://gw/", "--password", "x", "--password-stdin"],
        ["connect", "https://gw/", "--password", "x", "--echo", "-1"],
        [
            "connect",
            "https://gw/",
            "--password",
            "x",
            "--servercert",
            "sha1:" + "00" * 20,
            "--insecure",
        ],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""


def test_refused_gateway_exits_1_with_one_json_object() -> None:
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = _cli(
        "connect",
        f"https://127.0.0.1:{port}/",
        "--user",
        "u",
        "--password-stdin",
        "--json",
        stdin="pw\n",
    )
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert set(report) >= {"ok", "phases", "channel", "tunnel", "echo", "error"}
    assert report["ok"] is False
    assert report["error"] == {"phase": "tls", "reason": "refused", "message": "connection refused"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
    return make_server_pki(tmp_path_factory.mktemp("pki"), key_type="ec")


@pytest.mark.parametrize("password", ["test", "Wr0ng-Secret"])
async def test_report_never_contains_secrets(pki: ServerPki, password: str) -> None:
    async with trio.open_nursery() as nursery:
        gw = ScriptedGateway(pki.server_cert_path, pki.server_key_path, Script())
        await gw.start(nursery)
        args = build_parser().parse_args(
            ["connect", gw.url, "--user", "alice", "--password", password, "--echo", "2", "--json"]
        )
        opts = from_namespace(args, Front.CONNECT)
        profile = SessionProfile(replace(opts, cafile=str(pki.ca_cert_path)), gw.url)
        cfg = profile.config(username="alice", password=None, group=None, hostname="h1")
        report = await run_connect(profile, cfg)
        nursery.cancel_scope.cancel()
    text = json.dumps(report)
    assert report["ok"] is (password == "test")
    assert COOKIE not in text
    assert password not in text
    if report["ok"]:
        assert report["echo"]["received"] == 2
        assert set(report["phases"]) == {
            "tls",
            "group_select",
            "auth",
            "download",
            "cstp_connect",
            "connect",
        }
    else:
        assert report["error"]["reason"] == "auth_rejected"


def test_no_url_targets_the_embedded_gateway_and_stops_it() -> None:
    proc = _cli("connect", "--json", "--echo", "2", "--group", "Engineering")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert report["channel"] == "dtls"
    assert set(report["phases"]) == {
        "tls",
        "group_select",
        "auth",
        "download",
        "cstp_connect",
        "dtls",
        "connect",
    }
    assert report["echo"]["received"] == 2
    port = report["gateway"].rstrip("/").rsplit(":", 1)[1]
    # the gateway child is gone: nothing listens on its port any more
    sock = __import__("socket").socket()
    try:
        assert sock.connect_ex(("127.0.0.1", int(port))) != 0
    finally:
        sock.close()
