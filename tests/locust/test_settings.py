"""The ``--vpn-*`` options as a Locust process reads them, and ``python -m loadgen.locust``.

The table itself (defaults, meanings, errors, old spellings) is tested in
tests/test_options.py against every front end; this is Locust's side.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.locust.settings import check_files, settings_for
from loadgen.options import ClientOptions


def _options(**values: object) -> argparse.Namespace:
    return argparse.Namespace(**values)


def test_defaults() -> None:
    s = settings_for(None)
    assert (s.user, s.no_dtls, s.metrics_port, s.credentials) == ("user{n}", False, 9646, None)


def test_metrics_port_zero_is_off() -> None:
    assert settings_for(_options(vpn_metrics_port=0)).metrics_port == 0


def test_password_is_not_in_the_repr() -> None:
    s = settings_for(_options(vpn_password="hunter2-secret"))
    assert s.password == "hunter2-secret"
    assert "hunter2-secret" not in repr(s)


def test_settings_are_computed_once_per_option_set() -> None:
    a = settings_for(_options(vpn_group="g1", host="x"))
    assert settings_for(_options(vpn_group="g1", host="y")) is a  # only our values count
    assert settings_for(_options(vpn_group="g2")) is not a
    assert isinstance(a, ClientOptions)


def test_credentials_file_is_checked_at_start(tmp_path: Path) -> None:
    missing = settings_for(_options(vpn_credentials=str(tmp_path / "nope.txt")))
    with pytest.raises(ValueError, match="--vpn-credentials"):
        check_files(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n")
    with pytest.raises(ValueError, match="no identities"):
        check_files(settings_for(_options(vpn_credentials=str(empty))))
    good = tmp_path / "good.txt"
    good.write_text("alice:pw1\nbob:pw2:group2\n")
    check_files(settings_for(_options(vpn_credentials=str(good))))


def test_module_lists_every_option_without_importing_locust() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, runpy\n"
            "try:\n"
            "    runpy.run_module('loadgen.locust', run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('LOCUST-IMPORTED' if 'locust' in sys.modules else 'CLEAN')\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for option in (
        "--vpn-credentials",
        "--vpn-servercert",
        "--vpn-dtls-port",
        "--vpn-user-agent",
        "--vpn-download",
        "--vpn-dtls-schedule",
        "--prometheus-sd",
    ):
        assert option in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("CLEAN")
