"""Test session setup: the private network namespace and the interop policy.

As root, the whole test process moves into a fresh network namespace before
any test runs (loadgen/lab/netns.py), so ocserv, openconnect, their tun
devices and every socket a test opens live on that namespace's loopback only.

Interop tests (marker ``interop``) need root and the real ocserv/openconnect.
``--interop=require`` (the default, and what CI runs) turns a skipped interop
test into a failure, so a missing package can never pass silently;
``--interop=auto`` lets them skip; ``--interop=skip`` does not run them.
"""

from __future__ import annotations

import os

import pytest

from loadgen.lab.netns import NetnsError, enter_private_netns, in_private_netns

_MODE_KEY = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--interop",
        choices=["require", "auto", "skip"],
        default="require",
        help="require (default): a skipped interop test fails; auto: may skip; skip: do not run",
    )


def pytest_configure(config: pytest.Config) -> None:
    mode = str(config.getoption("--interop"))
    config.stash[_MODE_KEY] = mode
    if mode == "skip" or in_private_netns():
        return
    if os.geteuid() != 0:
        if mode == "require":
            raise pytest.UsageError(
                "interop tests need root (they run ocserv in a private network namespace); "
                "run as root or pass --interop=auto or --interop=skip"
            )
        return
    try:
        enter_private_netns()
    except NetnsError as exc:
        if mode == "require":
            raise pytest.UsageError(f"cannot create a private network namespace: {exc}") from exc


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash[_MODE_KEY] != "skip":
        return
    skip = pytest.mark.skip(reason="--interop=skip")
    for item in items:
        if item.get_closest_marker("interop") is not None:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and item.get_closest_marker("interop") is not None
        and item.config.stash[_MODE_KEY] == "require"
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"interop test skipped under --interop=require: {reason}"
