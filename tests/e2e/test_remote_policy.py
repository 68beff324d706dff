"""The live pin policy while `pinwatch up` runs, as a user drives it: every lever pulled with
the `pinwatch policy` command reaches the ingest edge's signed document within 5 s (verified
with the published keys, as a client would), bad input is refused by the command with a
clear message and the document stays as it was, the audit log tells who did what and why; and
`pinwatch simulate unplanned_rotation` with a `pinwatch policy kill` during it shows the
simulated devices' failing reports stop (they report the same failures as report-only)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from devstack.simulate.timeline import consumer_validations
from pinwatch.policyverify import PolicyVerifier
from tests.support.paths import REPO
from tests.support.policy import edge_polls
from tests.support.polling import wait_until
from tests.support.stack import processes_mentioning, stack_env, start_up

pytestmark = pytest.mark.timeout(600)

APP, WEB, API, CDN = "com.acme.app", "com.acme.web", "api.acme.test", "cdn.acme.test"
REFRESH = 2  # seconds: the devices' policy refresh (`pinwatch up --policy-refresh`)
WITHIN = 5.0  # seconds: from a lever to the edge serving it


@dataclass
class Up:
    env: dict[str, str]
    data_dir: Path

    @property
    def ingest(self) -> str:
        return f"http://127.0.0.1:{self.env['PINWATCH_INGEST_PORT']}"

    @property
    def consumer(self) -> str:
        return f"http://127.0.0.1:{self.env['PINWATCH_CONSUMER_PORT']}"

    def pinwatch(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pinwatch.cli", *argv],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def policy(self, *argv: str) -> str:
        """`pinwatch policy ARGV`, which must succeed; its output."""
        done = self.pinwatch("policy", *argv)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def document(self, app: str = APP) -> tuple[dict[str, Any], bytes]:
        """The edge's document for `app`, verified with its published keys: (claims, bytes)."""
        keys = httpx.get(f"{self.ingest}/v1/policy/keys", timeout=10).json()
        response = httpx.get(f"{self.ingest}/v1/policy/{app}", timeout=10)
        assert response.status_code == 200, response.text
        return PolicyVerifier(keys, app).verify(response.text), response.content

    def served(self, check: Callable[[dict[str, Any]], bool]) -> float:
        """Seconds until the edge's document meets `check` (fails after WITHIN)."""
        started = time.monotonic()
        met = wait_until(lambda: check(self.document()[0]), WITHIN, 0.05)
        assert met, f"not served within {WITHIN}s: {self.document()[0]}"
        return time.monotonic() - started

    def wait_edge_polled(self, rounds: int = 2) -> None:
        """Until the edge has asked its owner `rounds` more times (the first may have been
        under way already)."""

        def polls() -> float:
            return edge_polls(httpx.get(f"{self.ingest}/metrics", timeout=10).text)

        before = polls()
        assert wait_until(lambda: polls() >= before + rounds, 10, 0.1), "the edge did not poll"

    def failures(self, enforced: bool) -> float:
        text = httpx.get(f"{self.consumer}/metrics", timeout=10).text
        return consumer_validations(text, failed=True, enforced=enforced, app=APP, host=API)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    data_dir = tmp_path_factory.mktemp("up")
    env, flags = stack_env(data_dir, own_ports=True)
    up, _ = start_up(env, ["--policy-refresh", str(REFRESH), *flags])
    try:
        running = Up(env, data_dir)
        wait_until(lambda: httpx.get(f"{running.ingest}/v1/policy/{APP}").status_code == 200, 30)
        yield running
    finally:
        up.interrupt()
    assert processes_mentioning(str(data_dir)) == []


def host(claims: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in claims["hosts"] if h["host"] == name)


def test_every_lever_reaches_the_edge_within_five_seconds(up: Up) -> None:
    claims, _ = up.document()
    start = claims["version"]
    assert f"live policy version {start}" in up.policy("status")
    levers: list[tuple[tuple[str, ...], Callable[[dict[str, Any]], bool]]] = [
        (
            ("set-phase", CDN, "enforce", "--percent", "10", "--reason", "staged rollout"),
            lambda c: host(c, CDN)["phase"] == "enforce" and host(c, CDN)["enforce_percent"] == 10,
        ),
        (
            ("kill", APP, "--host", API, "--reason", "rotation broke pinning"),
            lambda c: host(c, API)["kill_switch"],
        ),
        (("kill", APP, "--reason", "every host"), lambda c: c["kill_switch"]),
        (("unkill", APP, "--reason", "over"), lambda c: not c["kill_switch"]),
        (
            ("unkill", APP, "--host", API, "--reason", "pinned key back"),
            lambda c: not host(c, API)["kill_switch"],
        ),
        (
            ("set-phase", CDN, "report_only", "--reason", "roll back"),
            lambda c: host(c, CDN)["phase"] == "report_only",
        ),
    ]
    took = []
    for number, (argv, check) in enumerate(levers, start=1):
        said = up.policy(*argv, "--actor", "oncall@e2e")
        assert said.startswith(f"version {start + number}: "), said
        took.append(up.served(lambda c, n=start + number, ok=check: c["version"] == n and ok(c)))
    print(f"\nlever to edge, seconds: {[round(t, 2) for t in took]}")
    assert max(took) < WITHIN
    # The other app was never killed: its document moved only in version and the shared phase.
    web, _ = up.document(WEB)
    assert not web["kill_switch"] and not host(web, API)["kill_switch"]

    history = orjson.loads(up.policy("history", "--json", "--limit", "6"))
    assert [r["action"] for r in history] == [
        "set_phase", "unkill", "unkill", "kill", "kill", "set_phase",
    ]  # fmt: skip
    assert {r["actor"] for r in history} == {"oncall@e2e"}
    kill = history[4]
    assert (kill["app"], kill["host"], kill["reason"]) == (APP, API, "rotation broke pinning")
    text = up.policy("history", "--host", API, "--limit", "3")
    assert "kill switch off for com.acme.app on api.acme.test (reason: pinned key back)" in text

    # The keys the command prints are the ones the edge publishes.
    published = httpx.get(f"{up.ingest}/v1/policy/keys", timeout=10).json()
    assert orjson.loads(up.policy("public-key")) == published
    assert (up.data_dir / "policy-signing-key.pem").exists()


BAD = [
    (("set-phase", "nope.acme.test", "enforce"), "unknown host 'nope.acme.test'"),
    (("set-phase", API, "enforce", "--percent", "101"), "percent must be from 0 to 100"),
    (("set-phase", API, "enforce", "--percent", "-1"), "percent must be from 0 to 100"),
    (("set-phase", CDN, "report_only", "--percent", "5"), "percent applies to enforce only"),
    (("kill", "com.nope", "--reason", "x"), "unknown app 'com.nope'"),
    (("kill", APP, "--host", "nope.acme.test", "--reason", "x"), "unknown host"),
    (("unkill", APP), "is not killed"),
    (("set-phase", API, "enforce"), "already enforce at 100 %"),
    (("kill", APP), "the following arguments are required: --reason"),
]


def test_bad_input_is_refused_and_the_old_document_still_served(up: Up) -> None:
    before, served = up.document()
    for argv, says in BAD:
        done = up.pinwatch("policy", *argv)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        assert says in done.stderr, (argv, done.stderr)
        assert done.stdout == "", argv
    # Once the edge has asked its owner again, the same bytes (same version, same signature).
    up.wait_edge_polled()
    assert up.document() == (before, served)
    # A policy file that leaves a host with one pin is refused whole, naming its line.
    one_pin = up.data_dir / "one-pin.yaml"
    text = (REPO / "pinwatch/examples/policy.example.yaml").read_text()
    one_pin.write_text(text.replace('      - {sha256: "6MSBF+', '      # - {sha256: "6MSBF+', 1))
    done = up.pinwatch("policy", "--policy", str(one_pin), "check")
    assert done.returncode == 1 and "one-pin.yaml:" in done.stderr
    assert "at least one primary and one backup pin" in done.stderr
    assert up.document() == (before, served)


def test_simulated_devices_obey_a_kill_switch(up: Up) -> None:
    """The simulator plays an unplanned rotation against the running stack; once the consumer
    counts enforced failures, the kill switch is pulled: within two refresh intervals (plus the
    edge's poll and the consumer's batch) no device that enforces fails any more, while the
    same failures keep arriving as report-only."""
    sim = subprocess.Popen(
        [sys.executable, "-m", "pinwatch.cli", "simulate", "unplanned_rotation",
         "--apps", APP, "--devices", "40", "--interval", "1", "--duration", "45",
         "--change-after", "3"],
        cwd=REPO, env=up.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert wait_until(lambda: up.failures(enforced=True) > 0, 30), "no enforced failures"
        killed_at = time.monotonic()
        up.policy("kill", APP, "--host", API, "--reason", "e2e: stop the bleeding")
        budget = 2 * REFRESH + 1 + 3  # two refreshes, the edge's poll, the consumer's batch
        last = [up.failures(enforced=True), time.monotonic()]

        def quiet_for(seconds: float) -> bool:
            now, count = time.monotonic(), up.failures(enforced=True)
            if count > last[0]:
                last[:] = [count, now]
            return now - last[1] >= seconds

        assert wait_until(lambda: quiet_for(4), budget + 20, 0.25), "enforced failures go on"
        stopped = last[1] - killed_at
        print(f"\nkill to the last enforced failure counted: {stopped:.1f}s (budget {budget}s)")
        assert stopped <= budget
        report_only = up.failures(enforced=False)
        assert wait_until(lambda: up.failures(enforced=False) > report_only, 10), (
            "the killed devices stopped reporting"
        )
        out, _ = sim.communicate(timeout=90)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.communicate()
    assert sim.returncode == 0, out
    assert "policy v" in out  # the devices said which document they obeyed
    up.policy("unkill", APP, "--host", API, "--reason", "e2e done")
