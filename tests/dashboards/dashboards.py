"""What the dashboard tests share: the shipped files, their PromQL, the metric catalogue."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from loadgen.faultproxy.metrics import FaultProxyMetrics
from loadgen.metrics.client import ClientMetrics
from loadgen.metrics.gateway import GatewayMetrics

__all__ = [
    "DASHBOARDS",
    "DASHBOARD_FILES",
    "ROOT",
    "SCRAPE",
    "Query",
    "catalogue",
    "child_process",
    "dashboard_queries",
    "fill",
    "free_port",
    "http_json",
    "instant_query",
    "iter_panels",
    "load",
    "metric_names",
    "need",
    "prometheus",
    "prometheus_config",
    "recording_rules",
    "tail",
    "wait_http",
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


# -- running the real Prometheus (and other children) in a test --------------------------

#: scrape, rule evaluation and file_sd refresh interval of the test copy of prometheus.yml
SCRAPE = "1s"
HTTP_TIMEOUT_S = 5.0
#: env proxies must never see loopback requests
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def need(tool: str) -> str:
    """The path of ``tool``; a CI dependency, so missing fails the test (never skips)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (scripts/install --test installs it)")
    return path


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(method: str, url: str, body: object | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with _HTTP.open(req, timeout=HTTP_TIMEOUT_S) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else None


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def wait_http(url: str, proc: subprocess.Popen[Any], log: Path, timeout_s: float) -> None:
    """Until ``url`` answers 200; fails early if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: process exited {proc.returncode}: {tail(log)}")
        with contextlib.suppress(OSError, urllib.error.URLError), _HTTP.open(url, timeout=1.0) as r:
            if r.status == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"{url} not ready after {timeout_s} s: {tail(log)}")


@contextlib.contextmanager
def child_process(argv: list[str], log: Path, **kw: Any) -> Iterator[subprocess.Popen[str]]:
    """A child process, stopped (SIGTERM, then SIGKILL) however the test ends."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv,
            stdout=kw.pop("stdout", out),
            stderr=out,
            stdin=subprocess.DEVNULL,
            text=True,
            **kw,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def prometheus_config(tmp: Path, targets: Mapping[str, list[str]]) -> tuple[Path, dict[str, Any]]:
    """The shipped prometheus.yml, written to ``tmp``, with only targets, paths and intervals
    changed: the ``loadgen`` job reads ``tmp/sd/*.json`` (the shipped pattern, resolved
    against ``tmp``; the directory is created), the static jobs named in ``targets`` scrape
    those, and the static jobs not named are dropped."""
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    config["global"].update(
        scrape_interval=SCRAPE, scrape_timeout=SCRAPE, evaluation_interval=SCRAPE
    )
    config["rule_files"] = [str(DASHBOARDS / f) for f in config["rule_files"]]
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] == "loadgen":
            (fsd,) = job["file_sd_configs"]
            (pattern,) = fsd["files"]
            (tmp / pattern).parent.mkdir(parents=True, exist_ok=True)
            fsd["files"] = [str(tmp / pattern)]
            fsd["refresh_interval"] = SCRAPE
        elif job["job_name"] in targets:
            job["static_configs"][0]["targets"] = list(targets[job["job_name"]])
        else:
            continue
        jobs.append(job)
    config["scrape_configs"] = jobs
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config


@contextlib.contextmanager
def prometheus(
    tmp: Path, config_path: Path, *, env: Mapping[str, str] | None = None, ready_s: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The real Prometheus (Debian's) on a free loopback port with ``config_path``, ready:
    yields its base URL and process; stopped at the end."""
    port = free_port()
    log = tmp / "prometheus.log"
    argv = [
        need("prometheus"),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]
    with child_process(argv, log, env=None if env is None else dict(env)) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/-/ready", proc, log, ready_s)
        yield base, proc


def instant_query(base: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """``/api/v1/query``: the vector's series, each ``{"metric": {...}, "value": [t, v]}``."""
    params = {"query": expr} if at is None else {"query": expr, "time": str(at)}
    answer = http_json("GET", f"{base}/api/v1/query?{urllib.parse.urlencode(params)}")
    assert answer["status"] == "success", (expr, answer)
    assert answer["data"]["resultType"] == "vector", (expr, answer)
    result = answer["data"]["result"]
    assert isinstance(result, list)
    return result
