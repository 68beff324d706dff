"""Each scenario through the real pipeline (ingest -> Kafka -> consumer -> chDB -> /metrics):
which counts move, and which cause the consumer infers. The simulator's tally of what ingest
accepted is the expectation; ClickHouse and the consumer's /metrics are what a user checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from pathlib import Path

import pytest

from devstack.simulate import (
    SCENARIOS,
    Chains,
    Population,
    PopulationConfig,
    Sender,
    SendOutcomes,
    build_population,
    generate,
)
from devstack.simulate.scenarios import BAD_RELEASE_VERSION, flood_device
from pinwatch.policy import load_policy
from tests.support.names import REPORT_ONLY_HOST, TEST_HOST
from tests.support.paths import REPO
from tests.support.pipeline import Pipeline, run_pipeline


@pytest.fixture
def population(policy_file: Path) -> Population:
    return build_population(load_policy(policy_file), PopulationConfig(devices=24, networks=4))


@pytest.fixture
def chains(session_dir: Path, ca: object) -> Chains:
    return Chains(session_dir / "pki")  # the session CA's keys, which the test policy pins


async def play(
    p: Pipeline, population: Population, scenario: str, chains: Chains, *, intervals: int = 3
) -> SendOutcomes:
    """Send every request of `intervals` report intervals (changed from the second on), then
    wait until the consumer has inserted and counted every accepted report."""
    async with Sender(p.ingest_url, concurrency=8) as sender:
        requests = generate(
            population, SCENARIOS[scenario], chains, intervals=intervals, changed=lambda i: i >= 1
        )
        await asyncio.gather(*(sender.send(r) for r in requests))
    tally = sender.tally
    assert tally.requests and tally.statuses == {202: tally.requests}, tally.statuses
    await p.wait_inserted(tally.accepted["reports"], timeout=90)
    return tally


@pytest.fixture
def played(make_settings, population, chains):
    """`async with played("scenario") as (pipeline, tally):` the scenario, sent and counted."""

    @contextlib.asynccontextmanager
    async def go(scenario: str, devices: Population | None = None):
        async with run_pipeline(make_settings()) as p:
            yield p, await play(p, devices or population, scenario, chains)

    return go


async def validations(p: Pipeline, **labels: str) -> float:
    return await p.metric("pinwatch_pin_validations_total", **labels)


async def failures(p: Pipeline, **labels: str) -> float:
    every = await validations(p, **labels)
    return every - await validations(p, result="ok", **labels)


async def group(p: Pipeline, column: str, where: str = "kind = 'pin_validation'") -> dict:
    rows = await p.store.query(
        f"SELECT {column}, sum(count) FROM {{db}}.reports WHERE {where} GROUP BY {column}"
    )
    return {(row[0] if len(row) == 2 else row[:-1]): int(row[-1]) for row in rows}


async def test_steady_state_moves_successes_and_network_errors_only(played):
    async with played("steady") as (p, tally):
        assert await validations(p, result="ok") == tally.accepted["pin:ok"] > 0
        assert await failures(p) == 0
        errors = sum(v for k, v in tally.accepted.items() if k.startswith("error:"))
        assert await p.metric("pinwatch_network_errors_total") == errors > 0
        assert await group(p, "pin_match") == {"primary": tally.accepted["pin:ok"]}


async def test_planned_rotation_moves_matches_to_the_backup_without_failures(played):
    async with played("planned_rotation") as (p, tally):
        backup = tally.accepted["pin:ok:backup"]
        assert backup > 0
        assert await validations(p, host=TEST_HOST, result="ok", pin_match="backup") == backup
        assert await failures(p) == 0
        # The report-only host kept its primary.
        assert await validations(p, host=REPORT_ONLY_HOST, pin_match="backup") == 0


async def test_unplanned_rotation_is_rotation_suspected_on_every_network(played, population):
    async with played("unplanned_rotation") as (p, tally):
        failed = tally.accepted["pin:pin_mismatch"]
        assert failed > 0
        assert (
            await failures(p, host=TEST_HOST, cause="rotation_suspected", pin_match="none")
            == failed
        )
        assert await failures(p) == failed
        networks = await group(p, "client_network", "result = 'pin_mismatch'")
        assert set(networks) == {n.prefix for n in population.networks}
        devices = await p.store.scalar(
            "SELECT uniqExact(device) FROM {db}.reports WHERE result = 'pin_mismatch'"
        )
        # Every device that talks to the API host fails (all of them in this population).
        assert devices == len(tally.devices_failing) == len(population.devices)


async def test_interception_is_interception_suspected_on_one_network(played, population):
    async with played("interception") as (p, tally):
        failed = tally.accepted["pin:pin_mismatch"]
        assert failed > 0
        assert await failures(p, cause="interception_suspected") == failed
        assert await failures(p, cause="rotation_suspected") == 0
        networks = await group(p, "client_network", "result = 'pin_mismatch'")
        assert set(networks) == {population.networks[0].prefix}


async def test_dns_outage_moves_network_errors_not_pin_failures(played):
    async with played("dns_outage") as (p, tally):
        dns = tally.accepted["error:dns"]
        assert dns > 0
        assert (
            await p.metric("pinwatch_network_errors_total", host=TEST_HOST, category="dns") == dns
        )
        assert await failures(p) == 0


async def test_device_flood_is_one_device_on_one_network(played, population):
    async with played("device_flood") as (p, tally):
        failed = tally.accepted["pin:pin_mismatch"]
        assert failed > 100  # unaggregated: one report per failure
        assert await failures(p, cause="interception_suspected") == failed
        rows = await p.store.query(
            "SELECT uniqExact(device), uniqExact(client_network), count() "
            "FROM {db}.reports WHERE result = 'pin_mismatch'"
        )
        assert rows[0][0] == 1 and rows[0][1] == 1 and rows[0][2] == failed
        assert tally.devices_failing == {flood_device(population).id}


async def test_bad_release_fails_only_the_new_version_against_a_pinned_chain(played):
    async with played("bad_release") as (p, tally):
        failed = tally.accepted["pin:pin_mismatch"]
        assert failed > 0
        assert await failures(p, app_version=BAD_RELEASE_VERSION) == failed
        assert await failures(p) == failed
        # The server's chain matches the policy's primary: the release's pin set is wrong.
        assert await failures(p, pin_match="primary") == failed
        versions = await group(p, "app_version", "result = 'pin_mismatch'")
        assert set(versions) == {BAD_RELEASE_VERSION}


async def test_mixed_clients_rotation_counts_every_format(played, policy_file):
    """Native, TrustKit and NEL devices together: TrustKit sends chains (rotation_suspected),
    NEL cannot (cause unknown), and every accepted failure is counted once."""
    population = build_population(
        load_policy(policy_file), PopulationConfig(devices=30, networks=3, client_format="mixed")
    )
    async with played("unplanned_rotation", population) as (p, tally):
        assert await failures(p) == tally.accepted["pin:pin_mismatch"] > 0
        formats = await group(p, "format", "result = 'pin_mismatch'")
        assert set(formats) == {"native", "trustkit", "nel"}
        causes = await group(p, "format, cause", "result = 'pin_mismatch'")
        assert {cause for (fmt, cause) in causes if fmt == "trustkit"} == {"rotation_suspected"}
        assert {cause for (fmt, cause) in causes if fmt == "nel"} == {"unknown"}


async def test_simulate_command_reports_what_the_pipeline_counts(make_settings, policy_file):
    """`pinwatch simulate` as a user runs it against a running ingest: it prints progress, and
    its final line's counts are what the consumer counts."""
    async with run_pipeline(make_settings()) as p:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pinwatch.cli",
            "simulate",
            "unplanned_rotation",
            "--url",
            p.ingest_url,
            "--duration",
            "7",
            "--change-after",
            "2",
            "--devices",
            "12",
            "--interval",
            "2",
            "--pki",
            str(p.settings.policy_file.parent / "pki"),
            cwd=REPO,
            env={**os.environ, "PINWATCH_POLICY_FILE": str(policy_file)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode()
        assert proc.returncode == 0, text
        final = text.strip().splitlines()[-1]
        counts = dict(re.findall(r"(\w+)=(\d+)", final))
        assert int(counts["pin_failures"]) > 0 and " [202:" in final
        await p.wait_inserted(int(counts["reports"]), timeout=60)
        assert await validations(p, result="ok") == int(counts["ok"])
        assert await failures(p, cause="rotation_suspected") == int(counts["pin_failures"])
