"""Structural checks of the shipped Grafana dashboards and their provisioning."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dashboards.dashboards import (
    DASHBOARD_FILES,
    DASHBOARDS,
    catalogue,
    dashboard_queries,
    iter_panels,
    load,
    metric_names,
)

DS_REF = {"type": "prometheus", "uid": "${datasource}"}
#: Grafana 11.x writes 39-40, 12.x 41-42: older dashboards get migrated on load
MIN_SCHEMA_VERSION = 39
_MATCHER = re.compile(r'(\w+)\s*=~\s*"\$\{?(\w+)\}?"')


def _variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


@pytest.fixture(scope="module")
def known_metrics() -> set[str]:
    return catalogue()


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_dashboard_header(name: str) -> None:
    board = load(name)
    assert isinstance(board["schemaVersion"], int)
    assert board["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert board["uid"] and len(board["uid"]) <= 40
    assert board["title"].startswith("loadgen")
    assert board["panels"], "a dashboard without panels"


def test_dashboard_uids_and_titles_are_unique() -> None:
    boards = [load(n) for n in DASHBOARD_FILES]
    assert len({b["uid"] for b in boards}) == len(boards)
    assert len({b["title"] for b in boards}) == len(boards)


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_panel_ids_are_unique(name: str) -> None:
    ids = [p["id"] for p in iter_panels(load(name)["panels"])]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), sorted(ids)


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_panels_do_not_overlap(name: str) -> None:
    cells: dict[tuple[int, int], int] = {}
    for panel in iter_panels(load(name)["panels"]):
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_datasource_variable_everywhere(name: str) -> None:
    board = load(name)
    variables = _variables(board)
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DS_REF, var["name"]
    for panel in iter_panels(board["panels"]):
        if panel["type"] == "row":
            assert "targets" not in panel
            continue
        assert panel["datasource"] == DS_REF, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == DS_REF, (panel["title"], target["refId"])
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    for ann in board["annotations"]["list"]:
        assert ann["datasource"] == DS_REF, ann["name"]
        assert ann["target"]["datasource"] == DS_REF, ann["name"]


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_job_and_instance_variables(name: str) -> None:
    variables = _variables(load(name))
    for key in ("job", "instance"):
        var = variables[key]
        assert var["type"] == "query"
        assert var["multi"] and var["includeAll"]
        assert var["query"]["query"].startswith("label_values("), var["query"]
        assert var["definition"] == var["query"]["query"]
        assert var["query"]["query"].endswith(f", {key})")
    # instances are listed for the chosen job
    assert 'job=~"$job"' in variables["instance"]["query"]["query"]


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_every_selector_is_filtered_by_job_and_instance(name: str) -> None:
    """Each selector has job=~"$<var>" and instance=~"$<var>" with dashboard variables."""
    board = load(name)
    variables = set(_variables(board))
    queries = dashboard_queries(name)
    assert queries
    for q in queries:
        selectors = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*\s*\{([^}]*)\}", q.expr)
        assert selectors, f"{q.where}: no selector in {q.expr}"
        for matchers in selectors:
            found = dict(_MATCHER.findall(matchers))
            assert "job" in found and "instance" in found, f"{q.where}: {q.expr}"
            assert found["job"] in variables and found["instance"] in variables, q.where
            assert found["job"].endswith("job") and found["instance"].endswith("instance")
        # range vectors follow the scrape interval, never a hard-coded window
        for window in re.findall(r"\[([^\]]+)\]", q.expr):
            assert window in ("$__rate_interval", "$__range"), f"{q.where}: [{window}]"


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_every_metric_is_in_the_catalogue(name: str, known_metrics: set[str]) -> None:
    for q in dashboard_queries(name):
        names = metric_names(q.expr)
        assert names, f"{q.where}: no metric in {q.expr}"
        unknown = names - known_metrics
        assert not unknown, f"{q.where}: unknown metrics {sorted(unknown)}"
    for var in _variables(load(name)).values():
        if var["type"] == "query":
            assert metric_names(var["query"]["query"]) <= known_metrics, var["name"]


def test_catalogue_sees_all_three_components(known_metrics: set[str]) -> None:
    # the catalogue itself must not be empty or one-sided, or the test above proves nothing
    for expected in (
        "loadgen_phase_duration_seconds_bucket",
        "loadgen_gateway_sessions_active",
        "loadgen_faultproxy_toxics_active",
        "process_open_fds",
        "instance:loadgen_dtls_fallback_ratio:rate1m",
    ):
        assert expected in known_metrics
    assert "loadgen_nonexistent_total" not in known_metrics


def test_load_dashboard_covers_the_issue() -> None:
    """The panels issue 8 asks for, by the metric each must show."""
    exprs = " ".join(q.expr for q in dashboard_queries("loadgen.json"))
    for needle in (
        "loadgen_sessions_active",  # sessions active by channel
        "rate(loadgen_sessions_started_total",  # tunnel setup rate
        "histogram_quantile(0.99, sum by (phase, le) (rate(loadgen_phase_duration_seconds_bucket",
        'loadgen_phase_duration_seconds_bucket{phase="connect"',  # heatmap of the whole connect
        "sum by (phase, reason)",  # failures by phase and reason
        "loadgen_dtls_fallbacks_total",
        "sum by (reason) (rate(loadgen_dtls_fallbacks_total",
        "loadgen_echo_rtt_seconds_bucket",
        "loadgen_echo_lost_total",
        "8 * sum by (channel, direction) (rate(loadgen_tunnel_bytes_total",
        "loadgen_tunnel_packets_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "loadgen_event_loop_lag_seconds_bucket",
        "loadgen_generator_saturated",
        "loadgen_faultproxy_toxics_active",
    ):
        assert needle in exprs, needle
    board = load("loadgen.json")
    types = {p["type"] for p in iter_panels(board["panels"])}
    assert {"heatmap", "state-timeline", "timeseries"} <= types
    heatmaps = [p for p in iter_panels(board["panels"]) if p["type"] == "heatmap"]
    assert all(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])
    annotations = board["annotations"]["list"]
    assert any("loadgen_faultproxy_toxics_active" in a["expr"] for a in annotations)


def test_dashboards_use_recording_rules() -> None:
    exprs = " ".join(q.expr for n in DASHBOARD_FILES for q in dashboard_queries(n))
    used = {m for m in metric_names(exprs) if ":" in m}
    assert {
        "instance:loadgen_sessions_failure_ratio:rate1m",
        "instance:loadgen_dtls_fallback_ratio:rate1m",
        "instance_channel:loadgen_echo_loss_ratio:rate1m",
    } <= used


def _provisioning(path: str) -> dict[str, Any]:
    data = yaml.safe_load((DASHBOARDS / "provisioning" / path).read_text())
    assert isinstance(data, dict)
    assert data["apiVersion"] == 1
    return data


def test_datasource_provisioning() -> None:
    sources = _provisioning("datasources/prometheus.yaml")["datasources"]
    assert len(sources) == 1
    (ds,) = sources
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"  # the compose service
    assert ds["isDefault"] is True


def test_dashboard_provisioning_points_at_the_dashboards() -> None:
    (provider,) = _provisioning("dashboards/loadgen.yaml")["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    compose = yaml.safe_load((DASHBOARDS.parent / "compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"]}
    assert mounts[path] == "./dashboards", "the provider's path must be the dashboards mount"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./dashboards/provisioning/dashboards"
    assert (
        mounts["/etc/grafana/provisioning/datasources"] == "./dashboards/provisioning/datasources"
    )
    for name in DASHBOARD_FILES:
        assert (DASHBOARDS / name).is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(path) and Path(home).name in DASHBOARD_FILES
