"""deploy/docker-compose.yml, checked offline. No container engine runs here or in CI, and the
Docker CLI installed here has no Compose plugin (`docker compose config` is not available), so
the file is parsed and held to the rules a reviewer would check: it builds deploy/Dockerfile,
every long-running service has a healthcheck, the services meant to scale publish no fixed host
port, Prometheus finds every replica, and Alertmanager's receivers come from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts.config import CONFIG
from pinwatch.settings import Settings
from tests.support.paths import REPO

ROOT = REPO
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
SCALED = ("ingest", "consumer")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def pinwatch_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("image") == "pinwatch:local"}


def host_ports(service: dict[str, Any]) -> list[str]:
    """Host sides of `ports` (short syntax HOST:CONTAINER or long syntax `published`)."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            if port.get("published"):
                out.append(str(port["published"]))
        elif ":" in str(port):
            out.append(str(port).rsplit(":", 1)[0])
    return out


def test_pinwatch_services_build_the_image(services: dict[str, dict[str, Any]]) -> None:
    ours = pinwatch_services(services)
    assert {"migrate", "ingest", "consumer", "alertmanager-config"} <= set(ours)
    for name, service in ours.items():
        build = service["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT, name
        assert (context / build["dockerfile"]) == ROOT / "deploy" / "Dockerfile", name
        assert "dockerfile_inline" not in build, name
        assert build["args"]["PINWATCH_EXTRAS"] == "", f"{name}: chDB in a server stack"


def test_every_long_running_service_has_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    awaited = {
        dependency
        for service in services.values()
        if isinstance(service.get("depends_on"), dict)
        for dependency, condition in service["depends_on"].items()
        if condition.get("condition") == "service_completed_successfully"
    }
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if check.get("disable"):
            # Only one-shot jobs that others wait to complete may go without one.
            assert service.get("restart") == "no" and name in awaited, name
        else:
            assert check["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_scaled_services_publish_no_fixed_host_port(services: dict[str, dict[str, Any]]) -> None:
    for name in SCALED:
        assert host_ports(services[name]) == [], f"{name} cannot --scale with a fixed host port"
    published = [port for service in services.values() for port in host_ports(service)]
    assert len(published) == len(set(published)), published


def test_apps_reach_ingest_through_the_edge(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    edge = services["edge"]
    assert host_ports(edge) == ["8787"]
    config = compose["configs"]["edge-config"]["content"]
    assert "proxy_pass $$ingest" in config and "http://ingest:8787" in config
    # Resolved per request (a variable upstream), so new replicas get traffic.
    assert "resolver 127.0.0.11" in config
    assert "X-Forwarded-For" in config
    ingest_env = services["ingest"]["environment"]
    assert ingest_env["PINWATCH_INGEST_FORWARDED_ALLOW_IPS"], "the edge's header is ignored"


def test_prometheus_scrapes_every_replica_under_the_rules_job_names(
    compose: dict[str, Any],
) -> None:
    config = yaml.safe_load(compose["configs"]["prometheus-config"]["content"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job, (service, port) in {
        CONFIG.ingest_job: ("ingest", 8787),
        CONFIG.consumer_job: ("consumer", 9787),
    }.items():
        assert jobs[job]["dns_sd_configs"] == [
            {"names": [service], "type": "A", "port": port, "refresh_interval": "15s"}
        ]
    assert config["global"]["scrape_interval"] == (
        f"{Settings.model_fields['prometheus_scrape_interval_seconds'].default:g}s"
    )


def test_alertmanager_receivers_come_from_the_environment(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    render = services["alertmanager-config"]
    entrypoint = render["entrypoint"]
    assert entrypoint[:4] == ["python", "-m", "alerts.generate", "--alertmanager-out"]
    out = Path(entrypoint[4])
    # Every receiver setting pinwatch has is passed through from the environment.
    receiver_settings = {
        f"PINWATCH_{name.upper()}" for name in Settings.model_fields if name.startswith("alert_")
    }
    assert set(render["environment"]) == receiver_settings
    for variable, value in render["environment"].items():
        assert value == f"${{{variable}:-}}", variable
    # The rendered file lands in a volume Alertmanager reads its configuration from.
    volume, _, mount = render["volumes"][0].partition(":")
    alertmanager = services["alertmanager"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in alertmanager["volumes"]}
    assert volume in compose["volumes"] and volume in mounts
    config_file = Path(mounts[volume]) / out.relative_to(mount)
    assert f"--config.file={config_file}" in alertmanager["command"]
    assert alertmanager["depends_on"]["alertmanager-config"] == {
        "condition": "service_completed_successfully"
    }
    assert not any("alerts/alertmanager.yml" in v for v in alertmanager["volumes"])
