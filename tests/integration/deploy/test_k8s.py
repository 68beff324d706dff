"""deploy/k8s, validated offline (no cluster here or in CI): every overlay renders with
kustomize, every rendered object validates against the Kubernetes OpenAPI schemas
(kubernetes-validate, Kubernetes KUBERNETES_VERSION, strict: unknown fields are errors as with
`kubectl apply`'s default server-side validation), the prometheus-operator objects validate
against the vendored CRDs' openAPIV3Schema (also strict), the PrometheusRule's groups pass
`promtool check rules`, and the AlertmanagerConfig, turned back into an Alertmanager
configuration, passes `amtool check-config` with the routes and inhibitions of
alerts/alertmanager.py. Then the deployment rules a reviewer checks: probes, non-root and
read-only pods, measured resources, consumers no more than partitions, Secrets only by name
(each documented in docs/deploy.md), selectors that select, jobs the rules expect."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from alerts import generate
from alerts.alertmanager import alertmanager_config
from alerts.config import CONFIG, KUBERNETES_RECEIVERS
from alerts.kubernetes import ALERTMANAGER_SECRET, DASHBOARD_LABEL
from pinwatch.policy import PolicyError, load_policy
from pinwatch.resources import EXAMPLE_POLICY
from pinwatch.settings import load_settings
from tests.support.paths import REPO

ROOT = REPO
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("local", "production")
CRDS = K8S / "vendor" / "prometheus-operator-crds"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
# The Kubernetes release whose schemas the objects must satisfy: the oldest supported minor
# the manifests use features of (sidecar-free; endPort, PodSecurity labels, autoscaling/v2).
KUBERNETES_VERSION = "1.30.0"
PINWATCH_WORKLOADS = {"Deployment", "Job"}


# --- rendering ------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """Kustomize and the CRDs write the matcher type `=` bare, which YAML 1.1 reads as its
    `value` tag: here it is the string it is."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: node.value)


@functools.cache
def kustomize_command() -> list[str]:
    """kubectl's embedded kustomize when it is 5.x, else the kustomize that deploy/install.sh
    builds (~/.cache/pinwatch/bin)."""
    version = subprocess.run(
        ["kubectl", "version", "--client"], capture_output=True, text=True
    ).stdout
    if "Kustomize Version: v5" in version:
        return ["kubectl", "kustomize"]
    built = Path.home() / ".cache" / "pinwatch" / "bin" / "kustomize"
    assert built.exists(), "no kustomize 5: run deploy/install.sh"
    return [str(built), "build"]


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [*kustomize_command(), str(K8S / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.load_all(result.stdout, Loader=_Loader) if d)  # noqa: S506


def of_kind(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in found])
    return found[0]


def pod_specs(objects: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in PINWATCH_WORKLOADS
    ]


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_renders(overlay: str) -> None:
    kinds = {o["kind"] for o in render(overlay)}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "NetworkPolicy",
        "PrometheusRule",
        "PodMonitor",
        "AlertmanagerConfig",
        "ConfigMap",
    } <= kinds
    assert "Secret" not in kinds, "secrets are referenced by name, never committed"


# --- schemas --------------------------------------------------------------------------------------


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """An openAPIV3Schema where unknown fields are errors (the API server prunes them, and
    `kubectl apply` rejects them by default), except where the CRD keeps unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # metadata is the API server's ObjectMeta: the CRD says only `type: object`.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict schema, from the vendored CRDs."""
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader subclass
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def test_vendored_crds_are_prometheus_operator_v0_93_0() -> None:
    readme = (CRDS / "README.md").read_text()
    assert "v0.93.0" in readme and "Apache" in readme and (CRDS / "LICENSE").exists()
    kinds = {kind for _, kind in crd_schemas()}
    assert kinds == {"PrometheusRule", "PodMonitor", "ServiceMonitor", "AlertmanagerConfig"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_against_kubernetes_and_crd_schemas(overlay: str) -> None:
    crd_checked = 0
    for obj in render(overlay):
        key = (obj["apiVersion"], obj["kind"])
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            assert key in crd_schemas(), f"{name}: no vendored CRD for {key}"
            errors = sorted(
                jsonschema.Draft7Validator(crd_schemas()[key]).iter_errors(obj), key=str
            )
            assert not errors, f"{name}: " + "; ".join(e.message for e in errors[:5])
            crd_checked += 1
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message} at {list(exc.path)}")
    assert crd_checked == 4  # PrometheusRule, two PodMonitors, AlertmanagerConfig


def test_schema_checks_catch_mistakes() -> None:
    """The two validators reject what they must: a misspelt field of a Deployment and of a
    PodMonitor (so a pass above means something)."""
    deployment = copy.deepcopy(named(render("production"), "Deployment", "pinwatch-ingest"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    monitor = copy.deepcopy(named(render("production"), "PodMonitor", "pinwatch-ingest"))
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    schema = crd_schemas()[(monitor["apiVersion"], "PodMonitor")]
    assert list(jsonschema.Draft7Validator(schema).iter_errors(monitor))


# --- the monitoring objects -----------------------------------------------------------------------


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)


def test_monitoring_objects_are_what_the_config_generates() -> None:
    stale = [p for p, text in generate.kubernetes_files().items() if p.read_text() != text]
    assert not stale, f"run `python -m alerts.generate`: {stale}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_rule_groups_pass_promtool(overlay: str, tmp_path: Path) -> None:
    rule = named(render(overlay), "PrometheusRule", "pinwatch")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = run("promtool", "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    shipped = yaml.safe_load(generate.RULES_FILE.read_text())
    count = sum(len(g["rules"]) for g in shipped["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout
    # The same groups as alerts/rules.yml, alerts also labelled with the overlay's namespace
    # (an AlertmanagerConfig routes only those).
    namespace = rule["metadata"]["namespace"]
    groups = copy.deepcopy(rule["spec"]["groups"])
    for group in groups:
        for item in group["rules"]:
            if "alert" in item:
                assert item["labels"].pop("namespace") == namespace, item["alert"]
    assert groups == shipped["groups"]


def _matcher_text(matcher: dict[str, str]) -> str:
    return f"{matcher['name']}{matcher.get('matchType', '=')}{json.dumps(matcher['value'])}"


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def _native_route(route: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in route.items():
        if key == "matchers":
            out["matchers"] = [_matcher_text(m) for m in value]
        elif key == "routes":
            out["routes"] = [_native_route(r) for r in value]
        else:
            out[_snake(key)] = value
    return out


SECRETS_DIR = "/etc/alertmanager/secrets"


def _native_receiver(receiver: dict[str, Any]) -> dict[str, Any]:
    """What the operator makes of a receiver, with Secret keys standing for mounted files (the
    files and URL the operator would write from the Secret)."""
    out: dict[str, Any] = {"name": receiver["name"]}
    for kind, configs in receiver.items():
        if kind == "name":
            continue
        native = []
        for config in configs:
            item: dict[str, Any] = {}
            for key, value in config.items():
                if key == "routingKey":
                    assert value["name"] == ALERTMANAGER_SECRET
                    item["routing_key_file"] = f"{SECRETS_DIR}/{value['key']}"
                elif key == "apiKey":
                    assert value["name"] == ALERTMANAGER_SECRET
                    item["api_key_file"] = f"{SECRETS_DIR}/{value['key']}"
                elif key == "urlSecret":
                    assert value["name"] == ALERTMANAGER_SECRET
                    item["url"] = f"https://hooks.invalid/{value['key']}"
                else:
                    item[_snake(key)] = value
            native.append(item)
        out[_snake(kind)] = native
    return out


def test_alertmanager_config_is_alertmanager_py_and_passes_amtool(tmp_path: Path) -> None:
    crd = named(render("production"), "AlertmanagerConfig", "pinwatch")["spec"]
    native = {
        "route": _native_route(crd["route"]),
        "inhibit_rules": [
            {
                "source_matchers": [_matcher_text(m) for m in rule["sourceMatch"]],
                "target_matchers": [_matcher_text(m) for m in rule["targetMatch"]],
                **({"equal": rule["equal"]} if "equal" in rule else {}),
            }
            for rule in crd["inhibitRules"]
        ],
        "receivers": [_native_receiver(r) for r in crd["receivers"]],
    }
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(native))
    result = run("amtool", "check-config", path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Routes and inhibitions are alerts/alertmanager.py's, matcher for matcher (parsed, so
    # quoting differences do not count); receivers read the Secret's documented keys.
    expected = alertmanager_config(
        **{k: (f"{SECRETS_DIR}/{v}" if k.endswith("_file") and v else v)
           for k, v in KUBERNETES_RECEIVERS.items()}
    )  # fmt: skip

    def parsed(text: str) -> tuple[str, str, str]:
        name, op, value = re.match(r"(\w+)(=~|!~|!=|=)(.*)", text).groups()  # type: ignore[union-attr]
        return name, op, json.loads(value) if value.startswith('"') else value

    def normal(route: dict[str, Any]) -> dict[str, Any]:
        return {
            **route,
            "matchers": [parsed(m) for m in route.get("matchers", [])],
            "routes": [normal(r) for r in route.get("routes", [])],
        }

    assert normal(native["route"]) == normal(expected["route"])
    for ours, theirs in zip(native["inhibit_rules"], expected["inhibit_rules"], strict=True):
        for side in ("source_matchers", "target_matchers"):
            assert [parsed(m) for m in ours[side]] == [parsed(m) for m in theirs[side]]
        assert ours.get("equal") == theirs.get("equal")
    oncall = next(r for r in native["receivers"] if r["name"] == "oncall")
    assert oncall["pagerduty_configs"][0]["routing_key_file"].endswith("pagerduty-routing-key")
    assert oncall["opsgenie_configs"][0]["api_key_file"].endswith("opsgenie-api-key")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_monitors_select_the_pods_under_the_rules_job_names(overlay: str) -> None:
    objects = render(overlay)
    jobs = {"ingest": CONFIG.ingest_job, "consumer": CONFIG.consumer_job}
    for component, job in jobs.items():
        monitor = named(objects, "PodMonitor", f"pinwatch-{component}")
        deployment = named(objects, "Deployment", f"pinwatch-{component}")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), component
        endpoint = monitor["spec"]["podMetricsEndpoints"][0]
        ports = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}  # fmt: skip
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
        assert {"action": "replace", "targetLabel": "job", "replacement": job} in endpoint[
            "relabelings"
        ]
    # Nothing else carries a component label the monitors select (the migration Job's pods).
    migrate = named(objects, "Job", "pinwatch-migrate")
    assert migrate["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == (
        "migrate"
    )


def test_production_monitoring_objects_carry_the_release_label() -> None:
    for obj in render("production"):
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", obj["kind"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboards_ship_as_sidecar_config_maps(overlay: str) -> None:
    maps = [
        o
        for o in of_kind(render(overlay), "ConfigMap")
        if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    committed = {p.name: p.read_text() for p in (ROOT / "dashboards" / "json").glob("*.json")}
    assert {name: text for m in maps for name, text in m["data"].items()} == committed
    for m in maps:
        assert DASHBOARD_LABEL.items() <= m["metadata"]["labels"].items()
        # Small enough for client-side apply's last-applied annotation (256 KiB).
        assert len(json.dumps(m)) < 200_000


# --- the workloads ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_non_root_read_only_unprivileged(overlay: str) -> None:
    specs = pod_specs(render(overlay))
    assert {name for name, _ in specs} == {
        "pinwatch-ingest",
        "pinwatch-consumer",
        "pinwatch-migrate",
    }
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name  # deploy/Dockerfile's USER
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context["capabilities"] == {"drop": ["ALL"]}, (name, container["name"])
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), (name, container["name"])
            assert "memory" in resources["limits"], (name, container["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_readyz_and_healthz(overlay: str) -> None:
    for component in ("ingest", "consumer"):
        deployment = named(render(overlay), "Deployment", f"pinwatch-{component}")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", component
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", component
        assert container["args"] == [{"ingest": "ingest", "consumer": "consume"}[component]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_consumers_wait_for_the_schema_the_job_migrates(overlay: str) -> None:
    objects = render(overlay)
    consumer = named(objects, "Deployment", "pinwatch-consumer")["spec"]["template"]["spec"]
    job = named(objects, "Job", "pinwatch-migrate")["spec"]["template"]["spec"]
    (init,) = consumer["initContainers"]
    assert init["args"][:2] == ["migrate", "--check"] and "--wait" in init["args"]
    assert job["containers"][0]["args"] == ["migrate"]
    # Same image and the same ClickHouse: the wait is for the schema this image knows.
    assert init["image"] == consumer["containers"][0]["image"] == job["containers"][0]["image"]
    ref = {"name": "pinwatch-clickhouse", "key": "dsn"}
    dsn = {"name": "PINWATCH_CLICKHOUSE_DSN", "valueFrom": {"secretKeyRef": ref}}
    assert dsn in init["env"] and dsn in job["containers"][0]["env"]


def _env(objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    return named(objects, "ConfigMap", "pinwatch-env")["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_consumer_replicas_at_most_partitions(overlay: str) -> None:
    objects = render(overlay)
    partitions = int(_env(objects)["PINWATCH_KAFKA_PARTITIONS"])
    replicas = named(objects, "Deployment", "pinwatch-consumer")["spec"]["replicas"]
    assert 1 <= replicas <= partitions


def test_production_runs_more_and_replicates_kafka_three_times() -> None:
    local, production = render("local"), render("production")
    env = _env(production)
    assert env["PINWATCH_KAFKA_REPLICATION_FACTOR"] == "3"
    assert env["PINWATCH_KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    # Every variable the overlay sets is a setting, with a value the settings accept.
    kafka = {k.removeprefix("PINWATCH_").lower(): v for k, v in env.items() if "_KAFKA_" in k}
    assert load_settings(**kafka).kafka_min_insync_replicas == 2
    for kind, name, field in (
        ("Deployment", "pinwatch-consumer", "replicas"),
        ("HorizontalPodAutoscaler", "pinwatch-ingest", "minReplicas"),
    ):
        assert (
            named(production, kind, name)["spec"][field] > named(local, kind, name)["spec"][field]
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingest_is_autoscaled_and_disruptions_are_bounded(overlay: str) -> None:
    objects = render(overlay)
    hpa = named(objects, "HorizontalPodAutoscaler", "pinwatch-ingest")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "pinwatch-ingest"
    assert "replicas" not in named(objects, "Deployment", "pinwatch-ingest")["spec"]
    for component in ("ingest", "consumer"):
        budget = named(objects, "PodDisruptionBudget", f"pinwatch-{component}")
        pods = named(objects, "Deployment", f"pinwatch-{component}")["spec"]["template"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= (
            pods["metadata"]["labels"].items()
        )
        service = named(objects, "Service", f"pinwatch-{component}")
        assert service["spec"]["selector"].items() <= pods["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_cover_every_pinwatch_pod(overlay: str) -> None:
    objects = render(overlay)
    policies = of_kind(objects, "NetworkPolicy")
    for name, _ in pod_specs(objects):
        workload = next(
            o for o in objects if o["kind"] in PINWATCH_WORKLOADS and o["metadata"]["name"] == name
        )
        labels = workload["spec"]["template"]["metadata"]["labels"]
        types = {
            t
            for p in policies
            if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
            for t in p["spec"]["policyTypes"]
        }
        assert "Egress" in types, name
        if name != "pinwatch-migrate":
            assert "Ingress" in types, name


def secret_references(node: Any) -> list[tuple[str, str]]:
    """(Secret, key) of every secretKeyRef (pods) and SecretKeySelector (the
    AlertmanagerConfig's routingKey, apiKey, urlSecret) in a rendered object."""
    found = []
    if isinstance(node, dict):
        for field, value in node.items():
            if field in {"secretKeyRef", "routingKey", "apiKey", "urlSecret"}:
                found.append((value["name"], value["key"]))
            else:
                found.extend(secret_references(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(secret_references(value))
    return found


def test_secrets_are_referenced_by_name_and_documented() -> None:
    docs = DEPLOY_DOC.read_text().replace("\\\n", " ")  # shell continuation lines joined
    referenced: dict[str, set[str]] = {}
    for overlay in OVERLAYS:
        for name, key in secret_references(list(render(overlay))):
            referenced.setdefault(name, set()).add(key)
    assert {"pinwatch", "pinwatch-clickhouse", ALERTMANAGER_SECRET} <= set(referenced)
    for name, keys in referenced.items():
        commands = re.findall(rf"kubectl[^\n]* create secret generic {re.escape(name)} .*", docs)
        assert commands, f"docs/deploy.md has no `kubectl create secret generic {name}`"
        for key in keys:
            assert any(f"--from-literal={key}=" in c or f"--from-file={key}=" in c
                       for c in commands), f"{name}: key {key} not documented"  # fmt: skip


def test_policy_config_maps() -> None:
    # Local: the demo policy, kept identical to the example it copies (kustomize reads no file
    # outside the overlay).
    local = K8S / "local" / "policy.yaml"
    assert local.read_text() == EXAMPLE_POLICY.read_text()
    load_policy(local)
    # Production: a template pinwatch refuses, so an unedited overlay accepts no reports.
    with pytest.raises(PolicyError, match="apps"):
        load_policy(K8S / "production" / "policy.yaml")
    for overlay in OVERLAYS:
        policy = named(render(overlay), "ConfigMap", "pinwatch-policy")
        for name, spec in pod_specs(render(overlay)):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            if "policy" in volumes:
                assert volumes["policy"]["configMap"]["name"] == policy["metadata"]["name"], name
