"""The shipped Prometheus config and rules pass promtool, the alerts fire as meant, and
compose.yaml and the ocserv config validate.  promtool, docker-compose and ocserv are CI
dependencies (scripts/install --test): a missing tool fails, it never skips."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.faultproxy.model import ProxySpec
from loadgen.gateway.pki import ensure_pki
from tests.dashboards.dashboards import DASHBOARDS, ROOT

RULES = DASHBOARDS / "rules"
TIMEOUT_S = 60


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/install --test installs it)")
    return path


def _run(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def test_promtool_check_config() -> None:
    # Relative paths (rules/, sd/) resolve against the config's directory: checked as shipped.
    proc = _run([_tool("promtool"), "check", "config", str(DASHBOARDS / "prometheus.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 2 rule files found" in proc.stdout


def test_promtool_check_rules() -> None:
    files = sorted(str(p) for p in RULES.glob("*.yml"))
    assert len(files) == 2
    proc = _run([_tool("promtool"), "check", "rules", *files])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_config_scrapes_the_three_components() -> None:
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "5s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"loadgen", "loadgen-gateway", "loadgen-faultproxy"}
    assert jobs["loadgen"]["file_sd_configs"][0]["files"] == ["sd/*.json"]
    assert jobs["loadgen-faultproxy"]["metrics_path"] == "/metrics"
    assert sorted(config["rule_files"]) == ["rules/alerts.yml", "rules/recording.yml"]


def _alert(labels: dict[str, str], summary: str, description: str) -> dict[str, Any]:
    return {
        "exp_labels": labels,
        "exp_annotations": {"summary": summary, "description": description},
    }


def _description(alert: str) -> str:
    data = yaml.safe_load((RULES / "alerts.yml").read_text())
    rules = {r["alert"]: r for g in data["groups"] for r in g["rules"]}
    return str(rules[alert]["annotations"]["description"])


def test_alerts_fire_on_synthetic_series(tmp_path: Path) -> None:
    """promtool test rules: each soak alert fires on a series made for it, and only then."""
    eng = {"job": "loadgen", "instance": "127.0.0.1:9646"}

    def series(name: str, values: str, **labels: str) -> dict[str, str]:
        all_labels = {**eng, **labels}
        inner = ", ".join(f'{k}="{v}"' for k, v in all_labels.items())
        return {"series": f"{name}{{{inner}}}", "values": values}

    tests = [
        {  # 10% of the sessions fail for 10 minutes
            "interval": "1m",
            "input_series": [
                series("loadgen_sessions_started_total", "0+10x30"),
                series("loadgen_sessions_total", "0+1x30", outcome="failed"),
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "LoadgenFailureRatioHigh", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "LoadgenFailureRatioHigh",
                    "exp_alerts": [
                        _alert(
                            {"job": "loadgen", "severity": "critical"},
                            "loadgen: 10% of sessions fail",
                            _description("LoadgenFailureRatioHigh"),
                        )
                    ],
                },
            ],
        },
        {  # no DTLS fallback for 20 minutes, then half the attempts fall back
            "interval": "1m",
            "input_series": [
                series("loadgen_dtls_attempts_total", "0+10x40"),
                series("loadgen_dtls_fallbacks_total", "0x20 5+5x19", reason="timeout"),
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "LoadgenDtlsFallbackRatioJump", "exp_alerts": []},
                {
                    "eval_time": "30m",
                    "alertname": "LoadgenDtlsFallbackRatioJump",
                    "exp_alerts": [
                        _alert(
                            {"job": "loadgen", "severity": "warning"},
                            "loadgen: DTLS fallback ratio up by 50%",
                            _description("LoadgenDtlsFallbackRatioJump"),
                        )
                    ],
                },
            ],
        },
        {  # 5% echo loss on DTLS, none on CSTP
            "interval": "1m",
            "input_series": [
                series("loadgen_echo_requests_total", "0+100x20", channel="dtls"),
                series("loadgen_echo_lost_total", "0+5x20", channel="dtls"),
                series("loadgen_echo_requests_total", "0+100x20", channel="cstp"),
                series("loadgen_echo_lost_total", "0x20", channel="cstp"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "LoadgenEchoLoss",
                    "exp_alerts": [
                        _alert(
                            {"job": "loadgen", "channel": "dtls", "severity": "warning"},
                            "loadgen: 5% echo loss on dtls",
                            _description("LoadgenEchoLoss"),
                        )
                    ],
                },
            ],
        },
        {  # the generator saturates from minute 2 on; a gateway target goes down at minute 2
            "interval": "1m",
            "input_series": [
                series("loadgen_generator_saturated", "0 0 1x10"),
                {
                    "series": 'up{job="loadgen-gateway", instance="gateway:9101"}',
                    "values": "1 1 0x10",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "LoadgenGeneratorSaturated", "exp_alerts": []},
                {
                    "eval_time": "5m",
                    "alertname": "LoadgenGeneratorSaturated",
                    "exp_alerts": [
                        _alert(
                            {**eng, "severity": "warning"},
                            "127.0.0.1:9646: the load generator is saturated",
                            _description("LoadgenGeneratorSaturated"),
                        )
                    ],
                },
                {
                    "eval_time": "5m",
                    "alertname": "LoadgenTargetDown",
                    "exp_alerts": [
                        _alert(
                            {
                                "job": "loadgen-gateway",
                                "instance": "gateway:9101",
                                "severity": "warning",
                            },
                            "loadgen-gateway target gateway:9101 is not scraped",
                            _description("LoadgenTargetDown"),
                        )
                    ],
                },
            ],
        },
    ]
    spec = {
        "rule_files": [str(RULES / "recording.yml"), str(RULES / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": tests,
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = _run([_tool("promtool"), "test", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_docker_compose_config() -> None:
    proc = _run([_tool("docker-compose"), "-f", str(ROOT / "compose.yaml"), "config", "-q"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_lab_services() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("ocserv", "gateway", "faultproxy", "locust-master", "locust-worker"):
        assert name in services, name
    for name in ("prometheus", "grafana"):
        assert name in services
    ocserv = services["ocserv"]
    assert "NET_ADMIN" in ocserv["cap_add"]
    assert any(d.startswith("/dev/net/tun") for d in ocserv["devices"])
    assert (
        "./dashboards/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in (services["prometheus"]["volumes"])
    )
    assert "./dashboards/rules:/etc/prometheus/rules:ro" in services["prometheus"]["volumes"]
    # published ports stay on the host's loopback
    for service in services.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
    # the fault proxy sits in front of both gateways, TCP and udp:// for DTLS
    proxies = json.loads((ROOT / "docker" / "faultproxy.json").read_text())
    specs = [ProxySpec.from_json_untrusted(p) for p in proxies]  # its --config format
    upstreams = {s.upstream for s in specs}
    assert all(s.enabled for s in specs)
    assert {"gateway:8443", "udp://gateway:8443", "ocserv:443", "udp://ocserv:443"} == upstreams


def test_ocserv_config_parses(tmp_path: Path) -> None:
    """``ocserv -t`` on the shipped config, with its paths moved into a temporary directory."""
    ocserv = _tool("ocserv")
    pki = ensure_pki(tmp_path, ["ocserv"])
    text = (ROOT / "docker" / "ocserv" / "ocserv.conf").read_text()
    text = (
        text.replace("/certs/server.pem", str(pki.cert_path))
        .replace("/certs/server-key.pem", str(pki.key_path))
        .replace("/etc/ocserv/ocpasswd", str(tmp_path / "ocpasswd"))
        .replace("/run/", f"{tmp_path}/")
    )
    assert "/certs/" not in text and "/run/" not in text
    (tmp_path / "ocserv.conf").write_text(text)
    (tmp_path / "ocpasswd").write_text("alice:*:$5$abcdefgh$x\n")
    shutil.copy(ROOT / "docker" / "ocserv" / "profile.xml", tmp_path / "profile.xml")
    proc = _run([ocserv, "-t", "-c", str(tmp_path / "ocserv.conf")], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "unknown option" not in out, out
    for key, value in (("max-clients", "0"), ("rate-limit-ms", "0"), ("max-ban-score", "0")):
        assert f"\n{key} = {value}\n" in text  # protocol.md section 8
