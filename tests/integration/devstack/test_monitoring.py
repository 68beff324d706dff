"""devstack.monitoring: the real Prometheus and Alertmanager as child processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from devstack.monitoring import (
    LocalAlertmanager,
    LocalPrometheus,
    MonitoringError,
)

ALWAYS_FIRING = """\
groups:
  - name: smoke
    rules:
      - alert: SmokeAlwaysFiring
        expr: vector(1)
        # Prometheus learns about its Alertmanager up to 5 s after start; an alert that fired
        # before that is only re-sent after the 1 min resend delay.
        for: 10s
        labels: {severity: info}
        annotations: {summary: always}
"""

SILENT_AM = """\
route: {receiver: nobody, group_wait: 0s}
receivers: [{name: nobody}]
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0) until reaped; its state says it is dead.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_prometheus_scrapes_evaluates_and_notifies_alertmanager(tmp_path: Path) -> None:
    rules = tmp_path / "smoke.yml"
    rules.write_text(ALWAYS_FIRING)
    with LocalAlertmanager(tmp_path / "am", config=SILENT_AM) as am:
        prom = LocalPrometheus(
            tmp_path / "prom",
            # Prometheus scrapes itself: a real target without needing anything else running.
            jobs={"self": []},
            scrape_interval=0.5,
            evaluation_interval=0.5,
            rule_files=[rules],
            alertmanager_url=am.url,
        )
        prom.config["scrape_configs"][0]["static_configs"][0]["targets"] = [
            f"127.0.0.1:{prom.port}"
        ]
        with prom:
            pid = prom.process.pid if prom.process else 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                held = am.alerts(alertname="SmokeAlwaysFiring")
                up = prom.query('up{job="self"}')
                if held and up:
                    break
                time.sleep(0.2)
            assert up and up[0]["value"][1] == "1"
            assert [a["labels"]["severity"] for a in held] == ["info"]
            assert [a["state"] for a in prom.alerts()] == ["firing"]
            assert prom.targets()[0]["health"] == "up"
        assert prom.process is None and not prom.pid_path.exists()
        assert _gone(pid)


def test_failed_start_names_the_log_and_leaves_no_process(tmp_path: Path) -> None:
    am = LocalAlertmanager(tmp_path / "am", config="route: {receiver: missing}\n")
    with pytest.raises(MonitoringError) as err:
        am.start(timeout=20)
    assert str(am.log_path) in str(err.value)
    assert "missing" in str(err.value)  # the engine's own complaint, from the log tail
    assert am.process is None and not am.pid_path.exists()


def test_stop_from_another_owner_uses_the_pid_file(tmp_path: Path) -> None:
    first = LocalAlertmanager(tmp_path / "am", config=SILENT_AM)
    first.start()
    pid = first.process.pid if first.process else 0
    # A second handle on the same data directory (e.g. `pinwatch down`) stops it.
    second = LocalAlertmanager(tmp_path / "am", port=first.port, config=SILENT_AM)
    assert second.running
    second.stop()
    first.process.wait(timeout=5) if first.process else None
    assert _gone(pid)
    first.stop()
