"""What the dashboard tests share: the shipped files, their PromQL, the metric catalogue."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from loadgen.faultproxy.metrics import FaultProxyMetrics
from loadgen.metrics.client import ClientMetrics
from loadgen.metrics.gateway import GatewayMetrics

__all__ = [
    "DASHBOARDS",
    "DASHBOARD_FILES",
    "ROOT",
    "Query",
    "catalogue",
    "dashboard_queries",
    "fill",
    "iter_panels",
    "load",
    "metric_names",
    "recording_rules",
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
DASHBOARD_FILES = ("loadgen.json", "gateway.json", "faultproxy.json")

#: a metric name right before its label matchers (every selector of ours has matchers)
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True, kw_only=True)
class Query:
    dashboard: str
    where: str  # "panel 7 'Tunnel setup rate' B" or "annotation 'Fault windows'"
    expr: str
    #: Grafana runs it as an instant query (tables), not over the time range
    instant: bool = False


def load(name: str) -> dict[str, Any]:
    data = json.loads((DASHBOARDS / name).read_text())
    assert isinstance(data, dict)
    return data


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_queries(name: str) -> list[Query]:
    """Every PromQL expression of a dashboard: panel targets and annotations."""
    board = load(name)
    out: list[Query] = []
    for panel in iter_panels(board["panels"]):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel.get('title')!r} {target.get('refId')}"
            instant = bool(target.get("instant")) and not target.get("range")
            out.append(Query(dashboard=name, where=where, expr=target["expr"], instant=instant))
    for ann in board.get("annotations", {}).get("list", []):
        if "expr" in ann:
            out.append(Query(dashboard=name, where=f"annotation {ann['name']!r}", expr=ann["expr"]))
    return out


def fill(expr: str, values: Mapping[str, str]) -> str:
    """Replace ``$name`` and ``${name}`` the way Grafana does (longest names first)."""
    for key in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + key + "}", values[key]).replace("$" + key, values[key])
    assert "$" not in expr, f"unfilled variable in {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names of the selectors in ``expr`` (label values blanked out first)."""
    return set(_SELECTOR.findall(_STRING.sub('""', expr)))


def recording_rules() -> list[tuple[str, str]]:
    data = yaml.safe_load((DASHBOARDS / "rules" / "recording.yml").read_text())
    return [
        (rule["record"], rule["expr"])
        for group in data["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]


def catalogue() -> set[str]:
    """Every sample name the code exposes, plus the recording rules' names."""
    names: set[str] = set()
    for registry in _registries():
        for family in registry.collect():
            # a labelled metric without children has no samples yet: name them by type
            names.update(f"{family.name}{suffix}" for suffix in _SUFFIXES[family.type])
            names.update(sample.name for sample in family.samples)
    names.update(record for record, _ in recording_rules())
    return names


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def _registries() -> Iterator[CollectorRegistry]:
    yield ClientMetrics(CollectorRegistry(), process=True).registry
    yield GatewayMetrics(CollectorRegistry(), process=True).registry
    yield FaultProxyMetrics(CollectorRegistry()).registry
