"""``loadgen gateway`` as users run it: help, startup lines, the reused CA,
Prometheus metrics, a clean SIGTERM with a session connected, usage errors,
and the Done-when command pair (``loadgen gateway`` then ``loadgen connect``)."""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from loadgen.engine.session import SessionConfig, open_session
from loadgen.engine.tls import TlsOptions, build_client_context
from loadgen.engine.url import parse_gateway_url
from loadgen.failures import Phase, Reason
from loadgen.proto.personality import personality_names
from tests.helpers.gateway import GatewayProcess, gateway_process


def _cli(*args: str, timeout_s: float = 60, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _readline(proc: subprocess.Popen[str], timeout_s: float = 20.0) -> str:
    """One line of the gateway's stdout, bounded: a hung gateway is killed."""
    assert proc.stdout is not None
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(proc.stdout.readline)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            proc.kill()  # unblocks the reader thread
            raise


def _stop(gw: GatewayProcess, timeout_s: float = 10.0) -> tuple[int, float]:
    """SIGTERM; the exit code and how long the gateway took to exit."""
    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    code = gw.proc.wait(timeout=timeout_s)
    return code, time.monotonic() - started


def test_help_explains_the_options() -> None:
    proc = _cli("gateway", "--help")
    assert proc.returncode == 0, proc.stderr
    for option in (
        "--listen",
        "--metrics-port",
        "--cert",
        "--key",
        "--cert-dir",
        "--user",
        "--users",
        "--accept-any",
        "--group",
        "--profile",
        "--reject-ratio",
        "--pool",
        "--mtu",
        "--dtls-mtu",
        "--no-dtls",
        "--dtls-ciphers",
        "--max-sessions",
        "--delay-auth-ms",
        "--personality",
    ):
        assert option in proc.stdout, option
    assert "never routes" in proc.stdout
    # the choices are the registry's
    assert "{" + ",".join(personality_names()) + "}" in proc.stdout


def test_startup_lines_and_the_ca_is_reused(tmp_path: Path) -> None:
    with gateway_process(tmp_path) as gw:
        assert gw.url == f"https://127.0.0.1:{gw.port}/"
        assert gw.port > 0
        assert gw.ca_path == tmp_path / "ca.pem"
        first = gw.ca_path.read_bytes()
        assert first.startswith(b"-----BEGIN CERTIFICATE-----")
        code, _ = _stop(gw)
        assert code == 0
    with gateway_process(tmp_path) as gw:
        assert gw.ca_path.read_bytes() == first
        _stop(gw)


@pytest.mark.parametrize("fixed", [True, False], ids=["given-port", "port-0"])
def test_metrics_port_serves_the_gateway_metrics(tmp_path: Path, fixed: bool) -> None:
    port = _free_port() if fixed else 0
    with gateway_process(tmp_path, "--metrics-port", str(port)) as gw:
        # the banner's ``metrics:`` line
        url = gw.metrics_url
        assert url is not None
        if fixed:
            assert url == f"http://127.0.0.1:{port}/metrics"
        else:  # the port really listening is shown, not 0
            assert re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*/metrics", url)
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            text = resp.read().decode()
        for name in (
            "loadgen_gateway_connections_active",
            "loadgen_gateway_sessions_active",
            "loadgen_gateway_sessions_total",
            "loadgen_gateway_handshakes_total",
            "loadgen_gateway_dropped_total",
            "loadgen_gateway_packets_total",
            "loadgen_gateway_bytes_total",
        ):
            assert name in text, name
        assert 'loadgen_gateway_dropped_total{reason="tls_handshake"} 0.0' in text
        # a TLS handshake that fails shows up on the next scrape
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw:
            raw.sendall(b"this is not TLS\r\n\r\n" * 4)
            raw.settimeout(5)
            while raw.recv(4096):
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url, timeout=10) as resp:
                text = resp.read().decode()
            if 'loadgen_gateway_dropped_total{reason="tls_handshake"} 1.0' in text:
                break
            time.sleep(0.05)
        assert 'loadgen_gateway_dropped_total{reason="tls_handshake"} 1.0' in text
        assert "process_cpu_seconds_total" in text


async def test_sigterm_stops_cleanly_with_a_session_connected(tmp_path: Path) -> None:
    with gateway_process(tmp_path, "--user", "alice:test") as gw:
        cfg = SessionConfig(
            url=parse_gateway_url(gw.url),
            username="alice",
            password="test",
            tls=TlsOptions(cafile=str(gw.ca_path)),
            timeout_s=10,
        )
        with trio.fail_after(30):
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                await session.connect()
                await session.wait_dtls()
                tunnel = session.tunnel
                assert tunnel is not None and tunnel.channel == "dtls"
                echo = await tunnel.echo(
                    session.echo_target(None), count=2, interval_s=0.01, timeout_s=2
                )
                assert echo.received == 2
                started = time.monotonic()
                gw.proc.send_signal(signal.SIGTERM)
                await tunnel.cstp.ended_event.wait()
                code = await trio.to_thread.run_sync(gw.proc.wait, 10)
                elapsed = time.monotonic() - started
                ended = tunnel.ended
                assert ended is not None
                assert (ended.phase, ended.reason) == (Phase.TUNNEL, Reason.TERMINATED)
        assert code == 0
        assert elapsed < 5
        log = gw.log_text()
        assert "stopping the gateway" in log
        assert "gateway stopped" in log
        assert "Traceback" not in log


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nonsense"], "HOST:PORT"),
        (["--listen", "127.0.0.1:port"], "--listen"),
        (["--listen", "127.0.0.1:70000"], "--listen"),
        (["--cert", "/nonexistent/cert.pem"], "--cert and --key go together"),
        (["--key", "/nonexistent/key.pem"], "--cert and --key go together"),
        (["--dtls-ciphers", "BOGUS"], "BOGUS"),
        (["--pool", "10.0.0.0/31"], "--pool"),
        (["--pool", "not-a-network"], "--pool"),
        (["--user", "nopassword"], "NAME:PASSWORD"),
        (["--reject-ratio", "2"], "reject"),
        (["--personality", "nonesuch"], "invalid choice"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _cli("gateway", "--cert-dir", str(tmp_path), *args, timeout_s=30)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("option", ["--listen", "--metrics-port"])
def test_port_in_use_is_a_clear_error(tmp_path: Path, option: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        value = f"127.0.0.1:{port}" if option == "--listen" else str(port)
        proc = _cli("gateway", "--cert-dir", str(tmp_path), option, value, timeout_s=30)
    assert proc.returncode == 1, proc.stderr
    assert "Address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "gateway listening" not in proc.stdout


def test_unreadable_certificate_exits_2(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    proc = _cli("gateway", "--cert", str(bogus), "--key", str(bogus), timeout_s=30)
    assert proc.returncode == 2, proc.stderr
    assert "cannot load the certificate" in proc.stderr


def _connect_json(url: str, ca_path: Path, *args: str, password: str) -> tuple[int, dict[str, Any]]:
    proc = _cli(
        "connect",
        url,
        "--user",
        "alice",
        "--password-stdin",
        "--cafile",
        str(ca_path),
        "--json",
        *args,
        stdin=password + "\n",
        timeout_s=60,
    )
    assert proc.stdout, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, report


def test_done_when_gateway_then_connect(tmp_path: Path) -> None:
    port = _free_port()
    cert_dir = tmp_path / "certs"
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadgen",
            "gateway",
            "--listen",
            f"127.0.0.1:{port}",
            "--user",
            "alice:test",
            "--pool",
            "10.200.0.0/16",
            "--cert-dir",
            str(cert_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = _readline(gateway)
        assert f"gateway listening: https://127.0.0.1:{port}/" in first, first
        second = _readline(gateway)
        assert f"CA certificate: {cert_dir / 'ca.pem'}" in second, second
        url = f"https://127.0.0.1:{port}/"
        code, report = _connect_json(url, cert_dir / "ca.pem", "--echo", "3", password="test")
        assert code == 0, report
        assert report["ok"] is True
        assert report["channel"] == "dtls"
        assert report["error"] is None
        assert report["echo"]["sent"] == 3
        assert report["echo"]["received"] == 3
        assert report["echo"]["target"] == "10.200.0.1"
        assert report["tunnel"]["address"].startswith("10.200.")
        assert report["dtls"]["fallback"] is None
        # the same gateway refuses a wrong password, as a typed failure
        code, report = _connect_json(url, cert_dir / "ca.pem", password="wrong")
        assert code == 1
        assert report["ok"] is False
        assert (report["error"]["phase"], report["error"]["reason"]) == ("auth", "auth_rejected")
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            code = gateway.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait(timeout=10)
            raise
        _, stderr = gateway.communicate(timeout=10)
    assert code == 0, stderr
    assert "gateway stopped" in stderr
