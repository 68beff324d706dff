"""`pinwatch ct watch` against a Certificate Transparency log served on loopback, built from
real certificates and precertificates of the test PKI (tests/support/ct_log.py: a real Merkle tree,
tree heads signed with the log's key, chosen from a v3 log list like a real log).

A good run, a resumed run, bounded work per poll, a watcher starting mid-log, and a log that
misbehaves (bad signature, a truncated entry, an entry that is not the one in the tree) or
cannot be reached: a clear message and exit 1, never a traceback, and no state advanced.

Tier: e2e for the command runs, integration for the in-process watcher (loopback HTTP log).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from devstack.certs import CertificateAuthority
from devstack.localkafka import free_port
from pinwatch.policy import load_policy
from pinwatch.settings import Settings
from prober.ct.loglist import parse_log_list
from prober.ct.watch import Watcher
from tests.support.ct_log import LoopbackLog, cert, pre
from tests.support.names import TEST_HOST
from tests.support.prober import REPO, pinwatch

pytestmark = pytest.mark.timeout(120)

CDN = "cdn.pinwatch.test"


@pytest.fixture
def policy(tmp_path: Path, ca: CertificateAuthority) -> Path:
    """api.pinwatch.test (and subdomains) pins the primary and backup leaf keys; the CDN host
    pins the issuing CA's key as its backup, so any certificate from it is pinned there."""
    path = tmp_path / "policy.yaml"
    path.write_text(
        'apps:\n  - id: com.example.pinned\n    ingest_keys: ["test-ingest-key-0123456789"]\n'
        f"hosts:\n  - host: {TEST_HOST}\n    include_subdomains: true\n    phase: enforce\n"
        "    pins:\n"
        f'      - {{sha256: "{ca.pin("primary")}", role: primary}}\n'
        f'      - {{sha256: "{ca.pin("backup")}", role: backup}}\n'
        f"  - host: {CDN}\n    phase: report_only\n    pins:\n"
        f'      - {{sha256: "{ca.pin("primary")}", role: primary}}\n'
        f'      - {{sha256: "{ca.pin("intermediate")}", role: backup}}\n'
    )
    return path


@pytest.fixture
def ct_log(ca: CertificateAuthority) -> Iterator[LoopbackLog]:
    log = LoopbackLog()
    ts = 1_790_000_000_000
    for entry in [
        cert(ca, [TEST_HOST], "primary", ts),  # 0: pinned
        pre(ca, [TEST_HOST], "rotated", ts + 1),  # 1: unpinned precertificate -> finding
        cert(ca, ["www.unrelated.test"], "rotated", ts + 2),  # 2: not a policy host
        # 3: a wildcard covering both hosts: unpinned for api, pinned by issuer for the CDN
        cert(ca, ["*.pinwatch.test"], "rotated", ts + 3),
        cert(ca, [f"deep.{TEST_HOST}"], "backup", ts + 4),  # 4: subdomain, backup key pinned
        pre(ca, [CDN], "rotated", ts + 5),  # 5: precert, issuer key pinned by the CDN
    ]:
        log.add(entry)
    try:
        yield log
    finally:
        log.stop()


def run_watch(
    policy: Path, log_list: Path, state: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, str, list[dict]]:
    result = pinwatch(
        "ct",
        "watch",
        "--once",
        "--policy",
        policy,
        "--log-list",
        log_list,
        "--state-dir",
        state,
        *extra,
        env={
            "PINWATCH_LOG_FORMAT": "json",
            "PINWATCH_CT_START_AT_BEGINNING": "true",
            **(env or {}),
        },
    )
    assert "Traceback" not in result.stderr, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return result.code, result.stdout + result.stderr, events


def findings(events: list[dict]) -> list[tuple[str, int, str]]:
    return [
        (e["host"], e["index"], e["finding"].split(" for ")[0])
        for e in events
        if e["event"] == "ct_unpinned_certificate"
    ]


def test_good_run_then_resumed_run(
    tmp_path: Path, ca: CertificateAuthority, policy: Path, ct_log: LoopbackLog
) -> None:
    log_list = ct_log.log_list(tmp_path / "log_list.json")
    state = tmp_path / "state"
    code, out, events = run_watch(policy, log_list, state)
    assert code == 0, out
    assert findings(events) == [
        (TEST_HOST, 1, "a precertificate"),
        (TEST_HOST, 3, "a certificate"),
    ]
    (one,) = [e for e in events if e["event"] == "ct_unpinned_certificate" and e["index"] == 1]
    assert one["finding"] == (
        f"a precertificate for {TEST_HOST} was issued with a key no shipped app version pins"
    )
    assert one["log"] == ct_log.url and one["pin"] == ca.pin("rotated")
    assert one["not_before"].startswith(str(dt.date.today() - dt.timedelta(days=1)))
    assert "2 certificate(s) on unpinned keys" in out
    # The retired log of the list is not followed.
    assert {e["log"] for e in events if "log" in e} == {ct_log.url}
    # Read with get-entries (at most 3 per answer, as the log caps them), nothing else.
    reads = [p for route, p in ct_log.requests if route.endswith("get-entries")]
    assert [(r["start"], r["end"]) for r in reads] == [("0", "5"), ("3", "5")]

    # A new certificate is logged; a restarted watcher reads only what is new.
    ct_log.requests.clear()
    ct_log.add(cert(ca, [TEST_HOST], "rotated", 1_790_000_000_100))  # 6
    code, out, events = run_watch(policy, log_list, state)
    assert code == 0, out
    assert findings(events) == [(TEST_HOST, 6, "a certificate")]
    reads = [p for route, p in ct_log.requests if route.endswith("get-entries")]
    assert [(r["start"], r["end"]) for r in reads] == [("6", "6")]
    assert "3 certificate(s) on unpinned keys" in out  # kept across restarts


def test_bounded_work_per_poll_and_metrics(
    tmp_path: Path, policy: Path, ct_log: LoopbackLog
) -> None:
    settings = Settings(
        ct_state_dir=tmp_path / "state", ct_start_at_beginning=True, ct_max_entries_per_poll=2
    )
    logs = parse_log_list(ct_log.log_list(tmp_path / "list.json").read_text(), "list")
    watcher = Watcher(load_policy(policy), settings, logs)
    for expected_next in (2, 4, 6, 6):
        outcome = asyncio.run(watcher.poll_all())
        assert outcome == {ct_log.url: None}
        text = generate_latest(watcher.metrics.registry).decode()
        assert f'pinwatch_ct_next_index{{log="{ct_log.url}"}} {expected_next}.0' in text
    # Each partial batch was proven against the signed tree by a consistency proof.
    consistency = [p for route, p in ct_log.requests if route.endswith("get-sth-consistency")]
    assert [(p["first"], p["second"]) for p in consistency] == [("2", "6"), ("4", "6")]
    text = generate_latest(watcher.metrics.registry).decode()
    assert f'pinwatch_ct_entries_total{{log="{ct_log.url}"}} 6.0' in text
    found = [
        line
        for line in text.splitlines()
        if line.startswith("pinwatch_ct_unpinned_certificate_info")
    ]
    assert len(found) == 2 and all(f'host="{TEST_HOST}"' in line for line in found)
    assert any('index="1"' in line for line in found) and any('index="3"' in line for line in found)


def test_a_watcher_starting_mid_log_proves_where_it_stands(
    tmp_path: Path, ca: CertificateAuthority, policy: Path, ct_log: LoopbackLog
) -> None:
    settings = Settings(ct_state_dir=tmp_path / "state", ct_start_at_beginning=False)
    logs = parse_log_list(ct_log.log_list(tmp_path / "list.json").read_text(), "list")
    watcher = Watcher(load_policy(policy), settings, logs)
    asyncio.run(watcher.poll_all())
    assert watcher.current_findings() == []  # only what is logged from now on
    ct_log.add(pre(ca, [f"new.{TEST_HOST}"], "rotated", 1_790_000_000_200))  # 6
    ct_log.add(cert(ca, [TEST_HOST], "primary", 1_790_000_000_201))  # 7
    assert asyncio.run(watcher.poll_all()) == {ct_log.url: None}
    assert [(f.host, f.index, f.kind) for f in watcher.current_findings()] == [
        (TEST_HOST, 6, "precertificate")
    ]
    proofs = [p for route, p in ct_log.requests if route.endswith("get-proof-by-hash")]
    assert [p["tree_size"] for p in proofs] == ["8"]


def test_misbehaving_or_unreachable_logs_fail_cleanly(
    tmp_path: Path, ca: CertificateAuthority, policy: Path, ct_log: LoopbackLog
) -> None:
    log_list = ct_log.log_list(tmp_path / "log_list.json")

    def refused(state: str, message: str, **env: str) -> None:
        code, out, _ = run_watch(policy, log_list, tmp_path / state, env=env)
        assert code == 1 and message in out, out
        assert not list((tmp_path / state).glob("log-*.json")), "state advanced on a failure"

    # A tree head signed with another key than the one in the log list.
    ct_log.sign_with = LoopbackLog().key
    refused("bad-sig", "the tree head signature (size 6) does not verify with the log's key")
    ct_log.sign_with = None
    # An entry cut short.
    ct_log.truncate = 2
    refused("truncated", f"{ct_log.url}: entry 2 is truncated: entry 2's leaf_input ends inside")
    ct_log.truncate = None
    # An entry that parses but is not the one the tree was signed over.
    ct_log.swap[4] = cert(ca, [f"deep.{TEST_HOST}"], "rotated", 1)
    refused("swapped", "do not hash to the signed tree of size 6")
    ct_log.swap.clear()
    # An answer beyond the response cap is not read to its end.
    ct_log.padding = 200_000
    refused("huge", "answer larger than 65536 bytes", PINWATCH_CT_MAX_RESPONSE_BYTES="65536")
    ct_log.padding = 0
    # A log nobody answers for.
    dead = ct_log.log_list(tmp_path / "dead.json", url="http://127.0.0.1:9/log/")
    code, out, _ = run_watch(policy, dead, tmp_path / "dead-state")
    assert code == 1 and "cannot reach http://127.0.0.1:9/log/ct/v1/get-sth" in out, out
    # And bad input: a log list that is not one, a policy that does not load.
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    code, out, _ = run_watch(policy, garbage, tmp_path / "g")
    assert code == 1 and "garbage.json: not JSON" in out, out
    code, out, _ = run_watch(policy, tmp_path / "missing.json", tmp_path / "g")
    assert code == 1 and "cannot read the log list" in out, out
    # The same log polled after all that reads everything from the start.
    code, out, _ = run_watch(policy, log_list, tmp_path / "fine")
    assert code == 0, out


def test_ct_watch_as_a_service_exports_its_findings(
    tmp_path: Path, policy: Path, ct_log: LoopbackLog
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pinwatch.cli",
            "ct",
            "watch",
            "--policy",
            str(policy),
            "--log-list",
            str(ct_log.log_list(tmp_path / "list.json")),
            "--state-dir",
            str(tmp_path / "state"),
            "--port",
            str(port),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PINWATCH_CT_START_AT_BEGINNING": "true",
            "PINWATCH_CT_POLL_INTERVAL_SECONDS": "1",
        },
    )
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and 'index="3"' not in text:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert 'pinwatch_ct_unpinned_certificate_info{host="api.pinwatch.test",index="3"' in text
        assert f'pinwatch_ct_poll_success{{log="{ct_log.url}"}} 1.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
