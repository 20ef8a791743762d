"""The chaos scenarios, headless against the embedded gateway, the fault proxy started by them.

``hello_delay.py``: with the window open from the start, the TLS and DTLS
phases carry the configured hello delays and every session still ends on DTLS.

``dtls_blocked.py``: UDP blackholed both ways for a window.  An established
tunnel moves to CSTP when DPD declares DTLS dead (``dpd`` fallback), sessions
started inside the window fall back after the DTLS schedule (``timeout``),
and after the window every tunnel is back on DTLS through the re-attempt.
The proxy's active-toxic gauge shows the window, and the sidecar's metrics
the fallbacks.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from loadgen.faultproxy.embedded import start_faultproxy_process, stop_faultproxy_process
from loadgen.metrics.summary import parse_exposition
from tests.helpers.locust_run import (
    PHASES,
    ROOT,
    free_port_block,
    kill_tagged,
    locust_argv,
    locust_env,
    new_tag,
    run_locust,
    scrape,
    stats_rows,
    wait_none_left,
)

PROXY_URL = re.compile(r"fault proxy started: (http://\S+)")


def _failures(prefix: Path) -> list[tuple[str, str, str]]:
    import csv

    with Path(f"{prefix}_failures.csv").open(newline="") as f:
        return [(r["Method"], r["Name"], r["Error"]) for r in csv.DictReader(f)]


def test_hello_delay_scenario(tmp_path: Path) -> None:
    prefix = tmp_path / "out"
    proc = run_locust(
        [
            *["-f", "scenarios/hello_delay.py", "--headless", "-u", "3", "-r", "3", "-t", "14s"],
            *["--csv", str(prefix), "--only-summary", "--vpn-metrics-port", "0"],
            *["--delay-at", "0", "--delay-for", "60", "--tls-delay-ms", "400"],
            *["--dtls-delay-ms", "800", "--reconnect-every", "5"],
        ],
        tag=new_tag("lghello"),
        timeout_s=90,
    )
    rows = stats_rows(prefix)
    assert all(r["Failure Count"] == "0" for r in rows), rows
    connect = {r["Name"]: r for r in rows if r["Type"] == "connect"}
    assert sorted(connect) == sorted([*PHASES, "reconnect"]), proc.stderr[-3000:]
    # medians: the hellos waited (the first connects may race the window's start)
    assert float(connect["tls"]["50%"]) >= 400, connect["tls"]
    assert float(connect["dtls"]["50%"]) >= 800, connect["dtls"]
    # a delayed hello is not a fallback: every echo went over DTLS
    assert {r["Name"] for r in rows if r["Type"] == "echo"} == {"dtls"}
    assert "fault window OPEN" in proc.stderr


BLOCK_AT_S = 3
BLOCK_FOR_S = 26
REATTEMPT_S = 8
RUN_S = 70
#: by then the last timeout fallback (at 6 + 31 s) has re-attempted after the window
ALL_BACK_BY_S = 66


def test_dtls_blocked_scenario(tmp_path: Path) -> None:
    tag = new_tag("lgblock")
    prefix = tmp_path / "out"
    metrics_port = free_port_block(1)
    argv = [
        *locust_argv(),
        *["-f", "scenarios/dtls_blocked.py", "--headless", "-u", "4", "-r", "0.5"],
        *["-t", f"{RUN_S}s", "--csv", str(prefix), "--only-summary"],
        *["--vpn-metrics-port", str(metrics_port), "--block-at", str(BLOCK_AT_S)],
        *["--block-for", str(BLOCK_FOR_S), "--vpn-dtls-reattempt", str(REATTEMPT_S)],
        # fallbacks show as failed dtls rows, by design: judged below, not by the exit code
        *["--exit-code-on-error", "0"],
    ]
    log = tmp_path / "locust.log"
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=locust_env(tag), stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    sidecar = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        deadline = time.monotonic() + 30
        proxy = None
        while proxy is None and time.monotonic() < deadline and proc.poll() is None:
            m = PROXY_URL.search(log.read_text())
            proxy = m.group(1) if m else None
            time.sleep(0.2)
        assert proxy is not None, log.read_text()[-3000:]
        started = time.monotonic()

        def blackholes() -> float:
            samples = parse_exposition(scrape(proxy + "/metrics"))
            return samples.total(
                "loadgen_faultproxy_toxics_active", proxy="vpn_dtls", toxic="blackhole"
            )

        # the window shows in the proxy's metrics: two blackholes (one per direction)
        seen = 0.0
        while time.monotonic() - started < BLOCK_AT_S + 10 and seen < 2:
            seen = blackholes()
            time.sleep(0.5)
        assert seen == 2, log.read_text()[-3000:]

        # the window closes (measured by the proxy itself, whatever the start skew) ...
        while time.monotonic() - started < BLOCK_AT_S + BLOCK_FOR_S + 15 and blackholes() > 0:
            time.sleep(0.5)
        assert blackholes() == 0
        # ... and after a re-attempt, every tunnel is back on DTLS
        on_dtls = 0.0
        while time.monotonic() - started < ALL_BACK_BY_S and on_dtls < 4:
            samples = parse_exposition(scrape(sidecar))
            on_dtls = samples.total("loadgen_sessions_active", channel="dtls")
            time.sleep(0.5)
        assert on_dtls == 4, scrape(sidecar)
        assert samples.total("loadgen_dtls_fallbacks_total", reason="dpd") >= 1
        assert samples.total("loadgen_dtls_fallbacks_total", reason="timeout") >= 1
        assert samples.total("loadgen_sessions_total", outcome="failed") == 0

        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        rows = stats_rows(prefix)
        echo = {r["Name"] for r in rows if r["Type"] == "echo"}
        assert echo == {"cstp", "dtls"}, rows
        # failures: only the DTLS phase (a fallback) and echoes lost inside the window
        allowed = {
            ("connect", "dtls", "VpnRequestError('dtls/timeout')"),
            ("echo", "dtls", "VpnRequestError('tunnel/timeout')"),
        }
        assert set(_failures(prefix)) <= allowed, _failures(prefix)
        assert wait_none_left(tag, 10.0) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kill_tagged(tag)


def test_chaos_scenario_uses_an_external_fault_proxy(tmp_path: Path) -> None:
    """``--faultproxy URL``: the scenario creates its proxies there (and removes them
    at the end) instead of starting a proxy of its own."""
    proxy, api = start_faultproxy_process()
    try:
        prefix = tmp_path / "out"
        proc = run_locust(
            [
                *["-f", "scenarios/hello_delay.py", "--headless", "-u", "2", "-r", "2"],
                *["-t", "8s", "--csv", str(prefix), "--only-summary"],
                *["--vpn-metrics-port", "0", "--faultproxy", api, "--delay-at", "0"],
                *["--delay-for", "60", "--tls-delay-ms", "400", "--dtls-delay-ms", "400"],
            ],
            tag=new_tag("lgextfp"),
            timeout_s=90,
        )
        assert "fault proxy started" not in proc.stderr
        assert "users go through the fault proxy" in proc.stderr
        tls = {r["Name"]: r for r in stats_rows(prefix) if r["Type"] == "connect"}["tls"]
        assert float(tls["50%"]) >= 400, tls
        # the proxy outlives the run, without the run's proxies
        assert json.loads(scrape(api + "/proxies")) == {}
    finally:
        stop_faultproxy_process(proxy)
