"""`pinwatch demo` and `pinwatch up` as a user runs them: real child processes (ingest,
consumer, Prometheus, Alertmanager, and Kafka unless a test broker is given), a timeline that
ends in a delivered page, a named component when one fails, and nothing left running."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from devstack.simulate.timeline import Timeline, _parse_time, consumer_failures
from tests.support.paths import REPO
from tests.support.stack import processes_mentioning, stack_env, start_up


def test_demo_plays_a_rotation_through_to_a_delivered_page(tmp_path: Path):
    env, flags = stack_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pinwatch.cli", "demo", "--steady", "12", "--devices", "60", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    for step in ("1/4 starting", "2/4 steady", "3/4 unplanned rotation", "4/4 shutting down"):
        assert step in out
    assert "Timeline (seconds since the unplanned rotation" in out

    timeline = json.loads((tmp_path / "demo" / "timeline.json").read_text())
    seconds = timeline["seconds"]
    assert all(seconds[stage] is not None for stage in seconds), seconds
    # The stages happen in pipeline order, all after the rotation.
    assert 0 <= seconds["sent"] <= seconds["stored"] <= seconds["scraped"]
    assert seconds["pending"] <= seconds["firing"] <= seconds["paged"]
    # The page is the rotation page for the API host, not some other alert.
    assert timeline["alertname"] == "PinwatchRotationBreakage"
    assert "api.acme.test" in timeline["page"] and "cause=rotation_suspected" in timeline["page"]
    assert processes_mentioning(str(tmp_path)) == []


def test_up_runs_until_ctrl_c_and_leaves_nothing_running(tmp_path: Path):
    env, flags = stack_env(tmp_path, own_ports=True)
    up, text = start_up(env, flags)
    try:
        assert f"http://127.0.0.1:{env['PINWATCH_PROMETHEUS_PORT']}" in text
        assert f"http://127.0.0.1:{env['PINWATCH_INGEST_PORT']}/v1/reports" in text
        assert processes_mentioning(str(tmp_path))  # the children are running
    finally:
        code = up.interrupt()  # also when the test failed early: stop it as a user would
    assert code == 0, up.text
    assert "stopped Prometheus" in up.text and "stopped consumer" in up.text
    assert processes_mentioning(str(tmp_path)) == []


def test_a_killed_stack_leaves_no_ingest_or_consumer_and_the_next_one_reaps_the_rest(
    tmp_path: Path,
):
    env, flags = stack_env(tmp_path, own_ports=True)
    first, _ = start_up(env, flags)
    first.kill()  # SIGKILL: no chance to clean up
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        " ingest" in p or " consume" in p for p in processes_mentioning(str(tmp_path))
    ):
        time.sleep(0.2)
    left = processes_mentioning(str(tmp_path))
    assert not any(" ingest" in p or " consume" in p for p in left), left
    assert any("prometheus" in p for p in left)  # the engines outlive a SIGKILLed supervisor

    second, text = start_up(env, flags)
    try:
        assert "stopping prometheus, left running by an earlier stack" in text
        assert "stopping alertmanager, left running by an earlier stack" in text
    finally:
        second.interrupt()
    assert processes_mentioning(str(tmp_path)) == []


def test_a_component_that_fails_to_start_is_named_with_its_log(tmp_path: Path):
    env, flags = stack_env(tmp_path, own_ports=True)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    env["PINWATCH_INGEST_PORT"] = str(busy.getsockname()[1])  # taken: ingest cannot bind
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pinwatch.cli", "up", *flags],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        busy.close()
    assert proc.returncode == 1
    assert "ingest failed to start" in proc.stderr
    assert f"log: {tmp_path / 'logs' / 'ingest.log'}" in proc.stderr
    assert processes_mentioning(str(tmp_path)) == []


def test_consumer_failures_reads_the_pin_failure_counter():
    text = (
        "# TYPE pinwatch_pin_validations_total counter\n"
        'pinwatch_pin_validations_total{app="a",result="ok"} 40.0\n'
        'pinwatch_pin_validations_total{app="a",result="pin_mismatch"} 3.0\n'
        'pinwatch_pin_validations_total{app="b",result="chain_invalid"} 2.0\n'
        "# TYPE pinwatch_network_errors_total counter\n"
        'pinwatch_network_errors_total{app="a",category="dns"} 9.0\n'
    )
    assert consumer_failures(text) == 5.0


def test_timeline_renders_seconds_since_the_rotation():
    timeline = Timeline(rotated_at=1000.0)
    assert timeline.mark("sent", 1000.4) and not timeline.mark("sent", 1009.0)
    timeline.mark("paged", 1061.25)
    timeline.alertname = "PinwatchRotationBreakage"
    text = timeline.render()
    assert "+0.4s  first failing report sent" in text
    assert "+61.2s  page delivered" in text or "+61.3s  page delivered" in text
    assert timeline.complete
    assert _parse_time("1970-01-01T00:16:40.5Z") == 1000.5
