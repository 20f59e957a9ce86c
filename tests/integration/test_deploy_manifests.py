"""deploy/k8s rendered by kustomize (Debian's kubectl) and checked offline: every resource
against the Kubernetes schemas of a supported version (kubernetes-validate, strict), and every
process `sessionvault up` runs has a Deployment with probes, requests and limits, a non-root
read-only container, a disruption budget and network policies under a default deny. The alert
rules and the dashboard name only metrics the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploy.servers import WORKERS
from ingest.metrics import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
OVERLAYS = ("base", "overlays/production", "overlays/keda", "overlays/leaf", "overlays/monitoring")
#: Custom resources (their operators' CRDs are not in the Kubernetes schemas).
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


#: The ports each process must reach (Kafka 9092/9093, PostgreSQL 5432, OpenSearch 9200, a
#: SIEM 443/8088/6514, the federation root 8471/443).
KAFKA = {9092, 9093}
NEEDS = {
    "persist": KAFKA | {5432},
    "segments": {5432},
    "index": KAFKA | {5432, 9200},
    "detect": KAFKA | {5432},
    "evidence": KAFKA | {5432},
    "siem-splunk": KAFKA | {443, 8088, 6514},
    "api": KAFKA | {5432, 9200},
    "tunnel": KAFKA | {5432, 9200, 8471, 443},
}


def render(path: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (scripts/system-packages.sh installs it)"
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions In/Exists) selects ``labels``."""
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "Exists" and value is None:
            return False
        if expr["operator"] == "NotIn" and value in expr["values"]:
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_resource_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM:
            assert doc["metadata"]["name"].startswith("sessionvault"), doc["metadata"]
            assert doc.get("spec"), key
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _processes(overlay: str) -> set[tuple[str, ...]]:
    """The command lines `up` runs that this overlay must deploy."""
    wanted = {path for path in WORKERS if path != ("worker", "tunnel")}
    wanted |= {
        ("worker", "siem", "--sink", "splunk"),
        ("serve", "--host", "0.0.0.0", "--port", "8470"),
    }
    if overlay == "overlays/leaf":
        wanted.add(("worker", "tunnel"))
    return wanted


@pytest.mark.parametrize("overlay", ["overlays/production", "overlays/leaf"])
def test_every_process_up_starts_is_deployed_probed_limited_and_fenced(overlay: str) -> None:
    docs = render(overlay)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    by_args = {
        tuple(d["spec"]["template"]["spec"]["containers"][0]["args"]): d for d in deployments
    }
    assert _processes(overlay) <= set(by_args), sorted(set(by_args))
    deny = [p for p in policies if p["spec"]["podSelector"] == {}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]  # fmt: skip
    assert deny
    assert set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for args in _processes(overlay):
        d = by_args[args]
        pod = d["spec"]["template"]
        labels = pod["metadata"]["labels"]
        spec = pod["spec"]
        [c] = spec["containers"]
        assert c["livenessProbe"]["httpGet"]["path"] in ("/livez", "/healthz"), args
        assert c["readinessProbe"]["httpGet"]["path"] in ("/readyz", "/healthz"), args
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"])
        assert {"cpu", "memory"} <= set(res["limits"])
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert any(selects(b["spec"]["selector"], labels) for b in budgets), args
        mine = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        allowed = {
            port["port"]
            for p in mine
            if "Egress" in p["spec"]["policyTypes"]
            for rule in p["spec"].get("egress") or []
            for port in rule.get("ports") or []
        }
        # Exactly the servers each process talks to (DNS for all), nothing else.
        assert allowed == NEEDS[labels["app.kubernetes.io/component"]] | {53}, (args, allowed)
        if args[0] == "serve":
            assert any(
                p["spec"].get("ingress") and "Ingress" in p["spec"]["policyTypes"]
                and p["metadata"]["name"] == "sessionvault-api-in"
                for p in mine
            )  # fmt: skip
    # The API is reachable: a Service and a TLS Ingress in front of it.
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    assert ingress["spec"]["tls"][0]["secretName"]
    # Scaling on consumer lag: an HPA on the external lag metric for the Kafka stages.
    hpas = {
        d["spec"]["scaleTargetRef"]["name"]: d
        for d in docs
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    assert {"sessionvault-persist", "sessionvault-index"} <= set(hpas)
    for hpa in hpas.values():
        assert (
            hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "sessionvault_consumer_lag"
        )


def test_the_keda_overlay_replaces_the_hpas_with_scaled_objects_on_lag() -> None:
    docs = render("overlays/keda")
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert {d["spec"]["scaleTargetRef"]["name"] for d in scaled} == {
        "sessionvault-persist",
        "sessionvault-index",
    }
    for d in scaled:
        assert "sessionvault_consumer_lag" in d["spec"]["triggers"][0]["metadata"]["query"]


def _exported() -> set[str]:
    """Every metric name the workers and the API export (counters with their _total, ...)."""
    import api.app  # noqa: F401 (registers the API's counter)

    names: set[str] = set()
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.describe() if hasattr(collector, "describe") else []:
            names |= {s.name for s in family.samples} | {family.name}
            if family.type == "counter":
                names.add(family.name + "_total")
            if family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_count", "_sum")}
    names |= {
        "sessionvault_worker_stalled",
        "sessionvault_worker_since_progress_seconds",
        "sessionvault_spool_bytes",
    }  # collected at scrape time (ingest/metrics.py)
    return names


def _used(text: str) -> set[str]:
    return set(re.findall(r"\b(sessionvault_[a-z_]+)", text))


def test_alert_rules_and_dashboard_name_only_metrics_the_code_exports() -> None:
    exported = _exported()
    rules = next(d for d in render("overlays/monitoring") if d["kind"] == "PrometheusRule")
    exprs = " ".join(r["expr"] for g in rules["spec"]["groups"] for r in g["rules"])
    alerts = {r["alert"] for g in rules["spec"]["groups"] for r in g["rules"]}
    assert {
        "SessionvaultWorkerStalled",
        "SessionvaultLagGrowing",
        "SessionvaultDeadLettersRising",
    } <= alerts
    dashboard = json.loads((K8S / "overlays/monitoring/grafana-dashboard.json").read_text())
    panels = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for used in (_used(exprs), _used(panels)):
        assert used
        assert used <= exported, sorted(used - exported)


def test_compose_runs_the_same_processes_with_real_settings_and_a_valid_siem_config(
    tmp_path: Path,
) -> None:
    from dataclasses import fields

    from sessionvault.settings import ENV_PREFIX, Settings
    from siem.config import load_siem_config

    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    commands = {
        tuple(s["command"]) for s in services.values() if isinstance(s.get("command"), list)
    }
    assert _processes("overlays/production") | {("migrate",)} <= commands, sorted(commands)
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    for name, service in services.items():
        env = service.get("environment") or {}
        used = {k for k in env if k.startswith(ENV_PREFIX)} - {"SESSIONVAULT_SPLUNK_TOKEN"}
        assert used <= known, (name, sorted(used - known))
    # The SIEM configuration both deployments ship parses, and names the sink deployed.
    k8s_siem = next(
        d
        for d in render("base")
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sessionvault-siem"
    )["data"]["siem.yaml"]
    (tmp_path / "k8s-siem.yaml").write_text(k8s_siem)
    env = {"SESSIONVAULT_SPLUNK_TOKEN": "x"}
    for path in (ROOT / "deploy" / "siem.example.yaml", tmp_path / "k8s-siem.yaml"):
        config = load_siem_config(path=path, env=env)
        assert [s.name for s in config.sinks] == ["splunk"]
    # Every variable the ConfigMap sets is a setting too.
    config_map = next(
        d
        for d in render("base")
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sessionvault"
    )
    assert set(config_map["data"]) <= known, sorted(set(config_map["data"]) - known)
