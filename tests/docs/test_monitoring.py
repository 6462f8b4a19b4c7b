"""deploy/monitoring: the Prometheus alert rules and the Grafana dashboard name only what the service exports."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from snippets import REPO

from backstop.service import metrics

MONITORING = REPO / "deploy" / "monitoring"
# what the issue asks the alerts to watch, each by a metric that shows it
REQUIRED_ALERTS = {
    "BackstopConsumerLag": "backstop_consumer_lag",
    "BackstopOutboxBacklog": "backstop_outbox_backlog",
    "BackstopLoopRestarts": "backstop_loop_restarts_total",
    "BackstopForkedWorkFailures": "backstop_background_failures_total",
    "BackstopFundBelowFloor": "backstop_fund_balance",
    "BackstopBadDebt": "backstop_fund_balance",
    "BackstopDeadLetters": "backstop_events_rejected_total",
}
METRIC_NAME = re.compile(r"\bbackstop_[a-z0-9_]+\b")
# label names in a selector {a="x"} or a grouping by (a, b) / without (a)
SELECTOR = re.compile(r"(backstop_[a-z0-9_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Sample name -> its label names, for every metric of the service's registry (children or not)."""
    names: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        labels = set(value._labelnames)
        name, kind = value._name, value._type
        if kind == "counter":
            names[f"{name}_total"] = labels
        elif kind == "histogram":
            names[f"{name}_bucket"] = labels | {"le"}
            names[f"{name}_sum"] = labels
            names[f"{name}_count"] = labels
        else:
            names[name] = labels
    return names


def check_expression(expression: str, names: dict[str, set[str]]) -> list[str]:
    problems = []
    used = set(METRIC_NAME.findall(expression))
    if not used:
        problems.append(f"names no backstop metric: {expression}")
    for name in sorted(used - names.keys()):
        problems.append(f"{name} is not exported by the service: {expression}")
    known_labels = set().union(*(names.get(name, set()) for name in used)) if used else set()
    for name, selector in SELECTOR.findall(expression):
        for matcher in filter(None, (part.strip() for part in selector.split(","))):
            label = re.split(r"[=!~]", matcher)[0].strip()
            if label not in names.get(name, set()):
                problems.append(f"{name} has no label {label!r}: {expression}")
    for group in GROUPING.findall(expression):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in known_labels:
                problems.append(f"no metric of the expression has the label {label!r}: {expression}")
    return problems


def test_the_checker_finds_unknown_metrics_and_labels() -> None:
    names = exported()
    assert check_expression("backstop_fund_balance < 0", names) == []
    assert check_expression("backstop_fund_balance_usd < 0", names) != []
    assert check_expression('backstop_fund_balance{fund="BTC"} < 0', names) != []
    assert check_expression("sum by (symbol) (backstop_consumer_lag)", names) != []
    assert check_expression("up == 0", names) != []


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((MONITORING / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alert_rules_name_only_exported_metrics() -> None:
    names = exported()
    problems = [f"{rule['alert']}: {problem}" for rule in _rules()
                for problem in check_expression(str(rule["expr"]), names)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(("alert", "metric"), sorted(REQUIRED_ALERTS.items()))
def test_every_required_alert_is_there(alert: str, metric: str) -> None:
    rules = {rule["alert"]: rule for rule in _rules()}
    assert alert in rules, f"deploy/monitoring/alerts.yml has no {alert}"
    assert metric in str(rules[alert]["expr"])
    assert rules[alert]["annotations"]["summary"] and rules[alert]["labels"]["severity"] in ("warning", "critical")


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_queries_name_only_exported_metrics() -> None:
    names = exported()
    problems = [problem for expression in _dashboard_expressions() for problem in check_expression(expression, names)]
    assert problems == [], "\n".join(problems)


def test_dashboard_shows_every_metric_family() -> None:
    shown = set().union(*(METRIC_NAME.findall(expression) for expression in _dashboard_expressions()))
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported()}
    missing = sorted(family for family in families
                     if not any(name == family or name.startswith(family + "_") for name in shown))
    assert missing == [], f"the dashboard shows no panel of {missing}"
