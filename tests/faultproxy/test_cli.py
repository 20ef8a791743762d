"""``loadgen faultproxy`` on the command line: help, banner, --config, a taken port."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from loadgen.faultproxy.embedded import (
    BANNER_URL,
    EmbeddedFaultProxyError,
    embedded_faultproxy,
    faultproxy_argv,
    start_faultproxy_process,
    stop_faultproxy_process,
)

LOADGEN = [sys.executable, "-m", "loadgen", "faultproxy"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOADGEN, *args], capture_output=True, text=True, timeout=60, check=False
    )


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_help_explains() -> None:
    out = _run("--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for needle in ("Toxiproxy", "udp://", "--dtls-port", "--config", "--seed", "8474", "latency"):
        assert needle in text, needle
    assert "--exit-with-parent" not in text
    assert "--tag" not in text


def test_banner_config_and_clean_stop(tmp_path: Path) -> None:
    config = tmp_path / "proxies.json"
    config.write_text(
        json.dumps([{"name": "web", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}])
    )
    proc = subprocess.Popen(
        [*LOADGEN, "--port", "0", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = BANNER_URL.fullmatch(line.strip())
        assert m, line
        url = m.group(1)
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        proxies = _get(url + "/proxies")
        assert isinstance(proxies, dict) and set(proxies) == {"web"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigint_stops_cleanly() -> None:
    proc, url = start_faultproxy_process()
    try:
        assert _get(url + "/proxies") == {}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        stop_faultproxy_process(proc)


def test_tag_marks_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """With LOADGEN_LOCUST_TAG set (as the Locust tests do), the child's command line
    carries ``--tag TAG`` so that a leftover proxy can be found; the option is ignored."""
    monkeypatch.setenv("LOADGEN_LOCUST_TAG", "fp-tag.1")
    assert faultproxy_argv()[-2:] == ["--tag", "fp-tag.1"]
    proc, url = start_faultproxy_process()
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"--tag") + 1] == b"fp-tag.1"
        assert _get(url + "/proxies") == {}
    finally:
        stop_faultproxy_process(proc)
    for bad in ("", "a b", "x;rm -rf", "-" * 65):
        monkeypatch.setenv("LOADGEN_LOCUST_TAG", bad)
        assert "--tag" not in faultproxy_argv()
    monkeypatch.delenv("LOADGEN_LOCUST_TAG")
    assert "--tag" not in faultproxy_argv()


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"name": "x"}), json.dumps([{"name": "x", "listen": "127.0.0.1:0"}])],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, content: str) -> None:
    config = tmp_path / "bad.json"
    config.write_text(content)
    out = _run("--port", "0", "--config", str(config))
    assert out.returncode == 2
    assert "bad --config" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""


def test_missing_config_file(tmp_path: Path) -> None:
    out = _run("--port", "0", "--config", str(tmp_path / "nope.json"))
    assert out.returncode == 2 and "cannot read" in out.stderr


def test_port_taken_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = _run("--port", str(taken.getsockname()[1]))
    assert out.returncode == 1
    assert "cannot listen" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(EmbeddedFaultProxyError, match="cannot listen"), socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        start_faultproxy_process(port=taken.getsockname()[1])


async def test_embedded_async_flavour() -> None:
    import trio

    with trio.fail_after(60):
        async with embedded_faultproxy() as url:
            assert BANNER_URL.fullmatch(f"faultproxy API: {url}")
            body = await trio.to_thread.run_sync(_get, url + "/version")
            assert isinstance(body, dict) and "version" in body
