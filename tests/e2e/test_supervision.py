"""`pinwatch up` left running: a consumer SIGKILLed under it comes back by itself with nothing
lost or counted twice, and a consumer that cannot come back pages the on-call through the
pipeline alerts within 180 s, while Prometheus and Alertmanager stay up.

One `pinwatch up` process (on the session's broker, free ports, its own data directory and a
copy of the example policy), played in two acts, since starting a stack is the longest part:

1. reports before, during and after a SIGKILL of the consumer: the ingest's accepted count,
   ClickHouse's rows and the two consumer processes' counters all agree;
2. the policy file removed, then the consumer SIGKILLed again: every restart fails to start,
   `up` keeps trying, and the page arrives at the receiver `up` runs.

`up` scrapes and evaluates at its own default (5 s): the 180 s budget is for that interval
(docs/operations.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from devstack.clients import native_batch, network_error, pin_validation
from pinwatch.policy import load_policy
from pinwatch.resources import EXAMPLE_POLICY
from tests.support.clickhouse import clickhouse_counts
from tests.support.pipeline import metric_value
from tests.support.polling import wait_until
from tests.support.stack import UpProcess, pids_of, stack_env

pytestmark = pytest.mark.timeout(600)

APP, KEY, HOST = "com.acme.app", "acme-app-demo-ingest-key-0001", "api.acme.test"
BATCHES = 10  # per act: before, during, after
PAGE_BUDGET_SECONDS = 180


class Traffic:
    """Native batches to `up`'s ingest, each one ok validation (count 5) and one network error:
    two reports, six validations and errors."""

    def __init__(self, ingest_url: str) -> None:
        policy = load_policy(EXAMPLE_POLICY)
        self.pin = policy.hosts[0].pins[0].sha256
        self.client = httpx.Client(base_url=ingest_url, timeout=30)
        self.sent = 0

    def send(self, batches: int, tag: str) -> None:
        for n in range(batches):
            reports = [
                pin_validation(HOST, None, with_chain=False, observed_pins=[self.pin], count=5),
                network_error(HOST, "timeout"),
            ]
            body = native_batch(reports, app=APP, device=f"{tag}-{n}")
            answer = self.client.post("/v1/reports", json=body, headers={"X-Pinwatch-Key": KEY})
            assert answer.status_code == 202, answer.text
            self.sent += 2


def metrics(url: str) -> str:
    try:
        return httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


def counter(url: str, name: str, **labels: str) -> float:
    return metric_value(metrics(url), name, **labels)


def counters(url: str) -> dict[str, float]:
    text = metrics(url)
    return {
        "inserted": metric_value(text, "pinwatch_consumer_inserted_reports_total"),
        "validations": metric_value(text, "pinwatch_pin_validations_total"),
        "errors": metric_value(text, "pinwatch_network_errors_total"),
        "duplicates": metric_value(text, "pinwatch_consumer_duplicate_reports_total"),
    }


def engine_pids(data_dir: Path) -> dict[str, int]:
    return {
        name: int((data_dir / name / f"{name}.pid").read_text())
        for name in ("prometheus", "alertmanager")
    }


def test_a_killed_consumer_comes_back_and_one_that_cannot_pages(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    data_dir = (tmp_path / "up").resolve()
    policy = tmp_path / "policy.yaml"
    shutil.copyfile(EXAMPLE_POLICY, policy)
    env, flags = stack_env(data_dir, own_ports=True, kafka_bootstrap=kafka_bootstrap)
    env["PINWATCH_POLICY_FILE"] = str(policy)
    ingest_url = f"http://127.0.0.1:{env['PINWATCH_INGEST_PORT']}"
    consumer_url = f"http://127.0.0.1:{env['PINWATCH_CONSUMER_PORT']}"
    up = UpProcess(env, flags)
    try:
        up.wait_ready()
        engines = engine_pids(data_dir)
        traffic = Traffic(ingest_url)

        # --- act 1: killed, back by itself, every report counted once ---------------------
        traffic.send(BATCHES, "before")
        assert wait_until(
            lambda: (
                counter(consumer_url, "pinwatch_consumer_inserted_reports_total") >= traffic.sent
            ),
            60,
        )
        first = counters(consumer_url)  # all committed: nothing moves until the kill
        [victim] = pids_of(data_dir, "consume")
        os.kill(victim, signal.SIGKILL)
        traffic.send(BATCHES, "during")  # accepted while the consumer is down or starting
        exited = up.wait_for(lambda line: "consumer exited after" in line, 30)
        assert exited is not None, up.text
        assert "(status -9, SIGKILL), restarting in 1 s" in exited
        assert up.wait_for(lambda line: "consumer is back (restart 1" in line, 120), up.text
        [revived] = pids_of(data_dir, "consume")
        assert revived != victim
        traffic.send(BATCHES, "after")
        second_total = traffic.sent - first["inserted"]
        assert wait_until(
            lambda: (
                counter(consumer_url, "pinwatch_consumer_inserted_reports_total") >= second_total
            ),
            60,
        )
        second = counters(consumer_url)
        accepted = counter(ingest_url, "pinwatch_ingest_reports_total")
        assert accepted == traffic.sent == 3 * BATCHES * 2
        assert first["inserted"] + second["inserted"] == accepted
        assert first["validations"] + second["validations"] == 3 * BATCHES * 5
        assert first["errors"] + second["errors"] == 3 * BATCHES
        assert second["duplicates"] == 0
        # The structured line for the restart, beside the one for people.
        assert "stack_component_exited" in up.text and "stack_component_restarted" in up.text

        # --- act 2: cannot come back, and pages ---------------------------------------------
        policy.unlink()  # the consumer reads it at start; the running ingest has it loaded
        [victim] = pids_of(data_dir, "consume")
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        failed = up.wait_for(lambda line: "consumer failed to start (restart 2)" in line, 60)
        assert failed is not None, up.text
        page = up.wait_for(
            lambda line: "PAGE [firing] PinwatchScrapeTargetDown" in line, PAGE_BUDGET_SECONDS
        )
        assert page is not None, up.text[-6000:]
        paged_after = time.time() - killed_at
        assert paged_after <= PAGE_BUDGET_SECONDS
        assert "pinwatch-consumer" in page
        assert engine_pids(data_dir) == engines  # Prometheus and Alertmanager never went down
        assert "prometheus exited" not in up.text and "alertmanager exited" not in up.text
        # why it cannot start, from its log
        assert "retrying in" in failed and f"cannot read pin policy {policy}" in up.text
    finally:
        code = up.interrupt()
    assert code == 0, up.text[-4000:]
    stored = clickhouse_counts(f"chdb:///{data_dir / 'chdb'}", "pinwatch")
    assert stored["rows"] == stored["ids"] == 3 * BATCHES * 2
    assert stored["reports_sum"] == 3 * BATCHES * 6
    print(f"\npipeline page {paged_after:.0f} s after the consumer could not come back")
