"""`pinwatch demo` and `pinwatch up` as a user runs them: real child processes (ingest,
consumer, Prometheus, Alertmanager, and Kafka unless a test broker is given), a timeline that
ends in a delivered page, a named component when one fails, and nothing left running."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO
from tests.support.polling import wait_until
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


def test_demo_kill_switch_plays_detect_kill_and_recover(tmp_path: Path):
    """After the page: the kill switch the page names is pulled, the failing reports stop
    within two policy refresh intervals, the server is fixed, the switch lifted, and the
    devices enforce again without failing."""
    env, flags = stack_env(tmp_path)
    refresh = 4
    proc = subprocess.run(
        [sys.executable, "-m", "pinwatch.cli", "demo", "--kill-switch", "--steady", "10",
         "--devices", "40", "--policy-refresh", str(refresh), *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    command = (
        "pinwatch policy kill com.acme.app --host api.acme.test "
        '--reason "PinwatchRotationBreakage: api.acme.test"'
    )
    assert f"kill switch: {command}" in out  # the page carries it...
    assert f"$ {command}" in out  # ...and the demo pulls exactly that
    assert "Kill switch (seconds since" in out
    kill = json.loads((tmp_path / "demo" / "timeline.json").read_text())["kill_switch"]
    seconds = kill["seconds"]
    assert all(seconds[stage] is not None for stage in seconds), seconds
    assert 0 <= seconds["served"] <= seconds["obeyed"]
    assert seconds["baseline"] <= 2 * refresh, seconds
    assert seconds["baseline"] < seconds["fixed"] < seconds["lifted"] < seconds["enforcing"]
    assert kill["versions"]["lifted"] == kill["versions"]["killed"] + 1
    assert kill["failures_after_lift"] == 0
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

    def runtime_gone() -> bool:
        left = processes_mentioning(str(tmp_path))
        return not any(" ingest" in p or " consume" in p for p in left)

    wait_until(runtime_gone, 30)
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
