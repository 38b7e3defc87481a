"""The chart's Grafana dashboard and PrometheusRule: valid, and about metrics podlatency exports.

Every query is parsed by a real PromQL parser (promql-parser, the Rust parser's Python bindings), and
every metric it selects must be one the service registers. The rule file's structure is checked as
Prometheus loads it (groups of rules, each an alert with an expression, a severity and a summary).
There is no Prometheus or Grafana here to load them; the chart is installed with real Helm against
the Kubernetes API emulator.
"""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import pytest
from prometheus_client import REGISTRY

from podlatency.metrics import live_metrics, model_metrics, request_metrics, service_metrics
from tests.integration.kube_emulator import KubeEmulator
from tests.integration.test_chart_install import CHART, install, named, scenario

DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m"}


def exported_metric_names() -> set[str]:
    """Every series name the service can export, as Prometheus sees it (counters' _total, ...)."""
    service_metrics(), request_metrics(), model_metrics(), live_metrics()  # registered on first use
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        else:
            names.add(family.name)
    return {name for name in names if name.startswith(("podlatency_", "training_samples", "model_"))} | {
        name for name in names if name in {"objective_type", "ensemble_active", "ensemble_mode"}
    }


def selected_metrics(expression: str) -> set[str]:
    """The metric names an expression selects (it must parse)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(str(node.name))

    promql_parser.walk(promql_parser.parse(expression), visit)
    return names


def test_the_metric_set_is_what_the_service_registers() -> None:
    """The names the checks below allow include the ones the dashboard and rules rely on."""
    names = exported_metric_names()
    assert {"podlatency_requests_total", "podlatency_request_duration_seconds_bucket"} <= names
    assert {"podlatency_model_ready", "podlatency_samples_received_total"} <= names
    assert "podlatency_retrains_total" in names
    assert "podlatency_last_retrain_timestamp_seconds" in names
    assert "up" not in names


def test_a_bad_query_is_caught() -> None:
    """The checks can fail: a syntax error raises, an unknown metric is reported."""
    with pytest.raises(ValueError, match="offset"):
        selected_metrics("sum(x) offset 1d")
    assert selected_metrics('rate(nope_total{a="b"}[5m])') - exported_metric_names() == {"nope_total"}


def test_the_dashboard_parses_and_asks_only_for_exported_metrics(cluster: KubeEmulator) -> None:
    """Every panel's query is valid PromQL over podlatency's metrics; the sidecar's ConfigMap carries it."""
    dashboard = json.loads((CHART / "dashboards" / "podlatency.json").read_text())
    exported = exported_metric_names()
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(queries) >= 12
    for query in queries:
        assert selected_metrics(query) <= exported, query
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("request rate", "p99", "phases", "batch", "shed", "version", "held-out", "rollouts"):
        assert topic in titles, topic
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])

    objects, _ = install(cluster, {"grafana": {"dashboard": {"enabled": True, "folder": "LLM routing"}}})
    configmap = named(objects, "ConfigMap", "pl-podlatency-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "LLM routing"}
    assert json.loads(configmap["data"]["podlatency.json"]) == dashboard


def rules_of(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    [rule] = [obj for obj in objects if obj["kind"] == "PrometheusRule"]
    groups = rule["spec"]["groups"]
    assert all(set(group) == {"name", "rules"} for group in groups)
    return {alert["alert"]: alert for group in groups for alert in group["rules"]}


def test_the_alert_rules_are_valid_and_about_exported_metrics(cluster: KubeEmulator) -> None:
    """Eleven alerts render with trainers on, three without; each expression parses and selects our metrics.

    With trainers, every predictor and trainer follows the rollout ConfigMap, and three alerts watch
    that: a pod serving another version than the declared one, a pod that cannot watch, and the
    ConfigMap gone.
    """
    objects, _ = install(cluster, scenario("full-values.yaml"))
    alerts = rules_of(objects)
    assert set(alerts) == {
        "PodlatencyPredictorNotReady", "PodlatencyShedding", "PodlatencyRolloutFailed",
        "PodlatencyNoLeader", "PodlatencyModelStale", "PodlatencyHoldoutErrorRising",
        "PodlatencyServingUndeclaredModel", "PodlatencyRolloutWatchDown", "PodlatencyRolloutConfigMapMissing",
        "PodlatencyLiveDrift", "PodlatencyLiveCoverageLow",
    }  # fmt: skip
    exported = exported_metric_names()
    for name, alert in alerts.items():
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert selected_metrics(alert["expr"]) <= exported, (name, alert["expr"])
        assert 'namespace="default"' in alert["expr"], "scoped to the release's namespace"
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"]
        assert DURATION.match(alert.get("for", "0s")), name
    assert "0.05" in alerts["PodlatencyShedding"]["expr"]
    assert "[600s]" in alerts["PodlatencyModelStale"]["expr"], "10 intervals of 60 s"
    assert 'job="pl-podlatency-trainer-metrics"' in alerts["PodlatencyNoLeader"]["expr"]
    assert 'job="pl-podlatency"' in alerts["PodlatencyPredictorNotReady"]["expr"]
    followers = 'job=~"pl-podlatency|pl-podlatency-trainer-metrics"'
    for name in ("PodlatencyServingUndeclaredModel", "PodlatencyRolloutWatchDown"):
        assert followers in alerts[name]["expr"], name
        assert alerts[name]["for"] == "5m"
    assert "podlatency_drift{" in alerts["PodlatencyLiveDrift"]["expr"]
    assert alerts["PodlatencyLiveDrift"]["for"] == alerts["PodlatencyLiveCoverageLow"]["for"] == "15m"
    coverage = alerts["PodlatencyLiveCoverageLow"]["expr"]
    assert 'type="quantile"' in coverage, "only a quantile model promises a coverage"
    assert "- 0.05" in coverage
    missing = alerts["PodlatencyRolloutConfigMapMissing"]
    assert "pl-podlatency-model" in missing["annotations"]["summary"]
    assert "helm upgrade pl" in missing["annotations"]["description"]

    fresh = cluster.kubeconfig.parent / "no-trainers"
    fresh.mkdir()
    with KubeEmulator(fresh) as other:
        objects, _ = install(other, {"prometheusRule": {"enabled": True}, "trainer": {"enabled": False}})
    assert set(rules_of(objects)) == {
        "PodlatencyPredictorNotReady",
        "PodlatencyShedding",
        "PodlatencyRolloutFailed",
    }
