"""Every shipped scenario, headless for a few seconds against the embedded gateway.

The stats CSV must show a ``connect`` row for every phase and no failure;
each scenario's own promise is checked on top (the storm reconnects every
user once, the capacity shape steps up and stops by itself).
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.locust_run import (
    PHASES,
    new_tag,
    run_locust,
    stats_rows,
)


def _run(tmp_path: Path, scenario: str, *args: str) -> tuple[list[dict[str, str]], str]:
    prefix = tmp_path / "out"
    proc = run_locust(
        [
            *["-f", f"scenarios/{scenario}", "--headless", "--csv", str(prefix), "--only-summary"],
            *["--vpn-metrics-port", "0", *args],
        ],
        tag=new_tag("lgscen"),
    )
    return stats_rows(prefix), proc.stderr


def _connect_rows(rows: list[dict[str, str]]) -> dict[str, int]:
    for row in rows:
        assert row["Failure Count"] == "0", row
    return {r["Name"]: int(r["Request Count"]) for r in rows if r["Type"] == "connect"}


def test_soak(tmp_path: Path) -> None:
    rows, _ = _run(tmp_path, "soak.py", "-u", "6", "-r", "6", "-t", "12s")
    connect = _connect_rows(rows)
    assert sorted(connect) == sorted(PHASES)
    assert all(n == 6 for n in connect.values()), connect
    # an echo burst or a traffic burst every 5 s for every user: two rounds in 12 s
    bursts = [r for r in rows if r["Type"] in ("echo", "traffic")]
    assert sum(int(r["Request Count"]) for r in bursts) >= 12
    assert {r["Name"] for r in bursts} == {"dtls"}


def test_storm_reconnects_every_user_once(tmp_path: Path) -> None:
    rows, _ = _run(
        tmp_path, "storm.py", "-u", "6", "-r", "6", "-t", "12s", "--storm-at", "4",
        "--storm-jitter", "1",
    )  # fmt: skip
    connect = _connect_rows(rows)
    assert sorted(connect) == sorted([*PHASES, "reconnect"])
    assert connect["reconnect"] == 6
    for phase in PHASES:
        assert connect[phase] == 12, (phase, connect)


def test_capacity_steps_up_and_stops_by_itself(tmp_path: Path) -> None:
    # no -t: the shape ends the test once --max-users is reached and judged
    rows, err = _run(
        tmp_path, "capacity.py", "--step-users", "3", "--step-seconds", "4", "--max-users", "9"
    )
    connect = _connect_rows(rows)
    assert sorted(connect) == sorted(PHASES)
    assert connect["connect"] == 9
    assert "capacity: last good step 9 users" in err
