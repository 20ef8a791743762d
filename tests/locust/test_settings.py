"""``VpnSettings``: the checked ``--vpn-*`` options, and ``python -m loadgen.locust``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.locust.settings import VpnSettings, check_files, settings_for


def _options(**values: object) -> argparse.Namespace:
    return argparse.Namespace(**values)


def test_defaults() -> None:
    s = VpnSettings.from_options(None)
    assert (s.user_pattern, s.dtls, s.metrics_port, s.credentials_file) == (
        "user{n}",
        True,
        9646,
        None,
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"vpn_servercert": "md5:00"}, "--vpn-servercert"),
        ({"vpn_servercert": "sha1:" + "00" * 20, "vpn_insecure": True}, "contradict"),
        ({"vpn_dtls_ciphers": "NOPE-SHA"}, "unknown cipher"),
        ({"vpn_dtls_port": 70000}, "--vpn-dtls-port"),
        ({"vpn_dtls_reattempt": 0.0}, "--vpn-dtls-reattempt"),
        ({"vpn_metrics_port": 70000}, "--vpn-metrics-port"),
        ({"vpn_user_pattern": "fixed"}, "--vpn-user-pattern"),
        ({"vpn_echo_count": 0}, "--vpn-echo-count"),
    ],
)
def test_bad_values_are_one_clear_error(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VpnSettings.from_options(_options(**values))


def test_metrics_port_zero_is_off() -> None:
    assert VpnSettings.from_options(_options(vpn_metrics_port=0)).metrics_port is None


def test_password_is_not_in_the_repr() -> None:
    s = VpnSettings.from_options(_options(vpn_password="hunter2-secret"))
    assert s.password == "hunter2-secret"
    assert "hunter2-secret" not in repr(s)


def test_settings_are_computed_once_per_option_set() -> None:
    a = settings_for(_options(vpn_group="g1", host="x"))
    assert settings_for(_options(vpn_group="g1", host="y")) is a  # only vpn_* values count
    assert settings_for(_options(vpn_group="g2")) is not a


def test_credentials_file_is_checked_at_start(tmp_path: Path) -> None:
    missing = VpnSettings.from_options(_options(vpn_credentials=str(tmp_path / "nope.txt")))
    with pytest.raises(ValueError, match="--vpn-credentials"):
        check_files(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n")
    with pytest.raises(ValueError, match="no identities"):
        check_files(VpnSettings.from_options(_options(vpn_credentials=str(empty))))
    good = tmp_path / "good.txt"
    good.write_text("alice:pw1\nbob:pw2:group2\n")
    check_files(VpnSettings.from_options(_options(vpn_credentials=str(good))))


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
    for option in ("--vpn-credentials", "--vpn-servercert", "--vpn-dtls-port", "--prometheus-sd"):
        assert option in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("CLEAN")
