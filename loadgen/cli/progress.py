"""Live progress of a run in the terminal (rich), and the human summary."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from loadgen.engine.stats import percentile

__all__ = ["Progress", "print_summary"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


class Progress:
    """One status table per tick: sessions by channel, rates, failures, latency, CPU."""

    def __init__(self, console: Console, duration_s: float) -> None:
        self.console = console
        self.duration_s = duration_s
        self._last: dict[str, float] = {}
        self._last_t = time.monotonic()
        self._last_cpu = time.process_time()

    def render(self, status: Mapping[str, Any]) -> Table:
        now = time.monotonic()
        dt = max(now - self._last_t, 1e-6)

        def rate(key: str) -> float:
            value = float(status.get(key, 0))
            r = (value - self._last.get(key, value)) / dt
            self._last[key] = value
            return r

        cpu_now = float(status.get("cpu_seconds", time.process_time()))
        cpu = (cpu_now - self._last_cpu) / dt
        self._last_cpu = cpu_now
        self._last_t = now
        table = Table(
            title=f"loadgen run  {status['elapsed']:.0f}/{self.duration_s:.0f} s",
            show_header=False,
            expand=False,
        )
        table.add_column("what")
        table.add_column("value")
        active = status["active"]
        table.add_row(
            "sessions",
            f"connecting {status['connecting']}  cstp {active.get('cstp', 0)}  "
            f"dtls {active.get('dtls', 0)}",
        )
        table.add_row(
            "totals",
            f"started {status['started']}  established {status['established']}  "
            f"failed {status['failed']}  closed {status['closed']}",
        )
        table.add_row("connect rate", f"{rate('established'):.1f}/s")
        times = status.get("connect_times", [])
        table.add_row(
            "connect p50 / p95",
            f"{_ms(percentile(times, 0.5))} / {_ms(percentile(times, 0.95))}",
        )
        attempts = status.get("dtls_attempted", 0)
        fallbacks = status.get("dtls_fallbacks", 0)
        ratio = fallbacks / attempts if attempts else 0.0
        table.add_row("DTLS fallback", f"{fallbacks}/{attempts} ({ratio:.1%})")
        rtts = status.get("echo_rtts", [])
        table.add_row(
            "echo",
            f"{status['echo_received']}/{status['echo_sent']} replies, "
            f"rtt p50 {_ms(percentile(rtts, 0.5))}",
        )
        table.add_row(
            "tunnel traffic",
            f"tx {rate('tx_bytes') * 8 / 1e6:.2f} Mbit/s  "
            f"rx {rate('rx_bytes') * 8 / 1e6:.2f} Mbit/s",
        )
        failures = status.get("failures", {})
        if failures:
            top = sorted(failures.items(), key=lambda kv: -kv[1])[:4]
            table.add_row("failures", ", ".join(f"{k} {v}" for k, v in top))
        sat = " [red]SATURATED[/red]" if status.get("saturated") else ""
        table.add_row("generator", f"CPU {cpu:.0%} of a core{sat}")
        return table


def print_summary(console: Console, summary: Mapping[str, Any], results: list[Any]) -> None:
    s = summary["sessions"]
    console.print(
        f"[bold]sessions[/bold]: started {s['started']}, established {s['established']}, "
        f"failed {s['failed']} (failure ratio {summary['failure_ratio']:.2%}); "
        f"on DTLS {summary['channels'].get('dtls', 0)}, "
        f"on CSTP {summary['channels'].get('cstp', 0)}; "
        f"DTLS fallback ratio {summary['dtls_fallback_ratio']:.2%}"
    )
    table = Table(title="phase latency", show_header=True)
    for col in ("phase", "p50", "p95", "p99", "max"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    for phase, stats in summary["phases"].items():
        if stats.get("p50") is None:
            continue
        table.add_row(phase, *(_ms(stats[k]) for k in ("p50", "p95", "p99", "max")))
    console.print(table)
    echo = summary["echo"]
    console.print(
        f"echo: {echo['received']}/{echo['sent']} replies, rtt p50 {_ms(echo['rtt_p50'])}, "
        f"p95 {_ms(echo['rtt_p95'])}"
    )
    if summary["failures"]:
        console.print("failures: " + ", ".join(f"{k} {v}" for k, v in summary["failures"].items()))
    gen = summary["generator"]
    sat = "[red]yes: figures may understate the gateway[/red]" if gen["saturated"] else "no"
    console.print(
        f"generator: {gen['cpu_seconds']:.1f} s CPU, "
        f"peak RSS {gen['peak_rss_bytes'] / 2**20:.0f} MiB, "
        f"saturated {sat}"
    )
    for r in results:
        mark = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
        console.print(f"threshold {r.expr}: {mark} ({r.message})")
