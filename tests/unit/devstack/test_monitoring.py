"""devstack.monitoring: the real Prometheus and Alertmanager as child processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.monitoring import (
    MonitoringError,
    duration,
    pipeline_jobs,
    prometheus_config,
)


def test_duration_text() -> None:
    assert duration(15) == "15s"
    assert duration(0.5) == "500ms"
    with pytest.raises(MonitoringError, match="positive"):
        duration(0)


def test_prometheus_config_from_arguments(tmp_path: Path) -> None:
    rules = tmp_path / "r.yml"
    config = prometheus_config(
        jobs={"pinwatch-consumer": ["127.0.0.1:9787"], "pinwatch-ingest": ["127.0.0.1:8787"]},
        scrape_interval=1,
        evaluation_interval=2,
        rule_files=[rules],
        alertmanager_url="http://127.0.0.1:9093",
    )
    assert config["global"] == {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "2s",
    }
    assert config["rule_files"] == [str(rules)]
    assert [j["job_name"] for j in config["scrape_configs"]] == [
        "pinwatch-consumer",
        "pinwatch-ingest",
    ]
    assert config["alerting"]["alertmanagers"] == [
        {"scheme": "http", "static_configs": [{"targets": ["127.0.0.1:9093"]}]}
    ]


def test_pipeline_jobs_use_the_rules_job_names() -> None:
    jobs = pipeline_jobs(ingest_url="http://127.0.0.1:8787", consumer_url="http://127.0.0.1:9787/")
    assert jobs == {"pinwatch-ingest": ["127.0.0.1:8787"], "pinwatch-consumer": ["127.0.0.1:9787"]}
    assert pipeline_jobs(consumer_url="http://127.0.0.1:9787") == {
        "pinwatch-consumer": ["127.0.0.1:9787"]
    }
    with pytest.raises(MonitoringError, match="pinwatch-ingest URL"):
        pipeline_jobs(ingest_url="127.0.0.1:8787")


def test_bad_target_is_named() -> None:
    with pytest.raises(MonitoringError, match="'pinwatch-consumer'.*'http://x:1/metrics'"):
        prometheus_config(jobs={"pinwatch-consumer": ["http://x:1/metrics"]}, rule_files=[])
