"""The rollout API on the real pipeline: report-only traffic POSTed to ingest from several
loopback networks, through Kafka, classified by the consumer into chDB, asked through the
consumer's API. Every number of the answer is checked against what was sent, and the verdict for
a clean rollout, a surprise CDN edge, and a pin set that strands a release."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumers.rollout.text import render_text
from devstack.certs import CertificateAuthority
from devstack.clients import native_batch, nel_report, pin_validation
from pinwatch.cli import build_parser
from pinwatch.settings import Settings
from tests.support.names import TEST_APP, TEST_HOST
from tests.support.pipeline import Pipeline, run_pipeline
from tests.support.rollout_traffic import INTERCEPTION, Sent, Traffic

NEXT_BACKUP = base64.b64encode(hashlib.sha256(b"next offline backup key").digest()).decode()
TOKEN = "rollout-test-admin-token"
INGEST_KEY = "rollout-test-ingest-key-0123"


@pytest.fixture
def rollout_policy(ca: CertificateAuthority, tmp_path: Path) -> Path:
    """The host pinned to primary + backup, and a candidate set "next" that drops the backup."""
    path = tmp_path / "policy.yaml"
    path.write_text(
        f"""apps:
  - id: {TEST_APP}
    ingest_keys: ["{INGEST_KEY}"]
hosts:
  - host: {TEST_HOST}
    phase: report_only
    pins:
      - {{sha256: "{ca.pin("primary")}", role: primary, label: leaf}}
      - {{sha256: "{ca.pin("backup")}", role: backup, label: offline-backup}}
    candidate_pin_sets:
      next:
        - {{sha256: "{ca.pin("primary")}", role: primary, label: leaf}}
        - {{sha256: "{NEXT_BACKUP}", role: backup, label: next-backup}}
"""
    )
    return path


@pytest.fixture
def settings(make_settings: Callable[..., Settings], rollout_policy: Path) -> Settings:
    return make_settings(
        policy_file=rollout_policy,
        admin_token=TOKEN,
        rollout_min_devices=30,
        rollout_max_would_fail_share=0.01,
        rollout_min_group_devices=5,
        rollout_surprise_min_networks=3,
        rollout_max_interception_share=0.1,
    )


@pytest.fixture
async def pipeline(settings: Settings) -> AsyncIterator[Pipeline]:
    async with run_pipeline(settings) as p:
        yield p


@pytest.fixture
async def api(pipeline: Pipeline) -> AsyncIterator[httpx.AsyncClient]:
    """The consumer's real API (consumers.api.create_api, served by uvicorn)."""
    async with httpx.AsyncClient(base_url=pipeline.consumer_url, timeout=30) as client:
        yield client


async def deliver(p: Pipeline, traffic: Traffic) -> None:
    """POST every device's reports as one native batch to the real ingest, from the device's
    network: a loopback source address of its own, so ingest sees a distinct client /24."""
    by_device: dict[str, list[Sent]] = {}
    for s in traffic.sent:
        by_device.setdefault(s.device, []).append(s)
    for device, sent in by_device.items():
        first = sent[0]
        body = native_batch(
            [
                pin_validation(
                    TEST_HOST,
                    s.chain,
                    result=s.result,
                    enforced=s.enforced,
                    count=s.count,
                    report_id=s.report_id,
                )
                for s in sent
            ],
            app=TEST_APP,
            version=first.app_version,
            platform=first.platform,
            device=device,
        )
        transport = httpx.AsyncHTTPTransport(local_address=first.network)
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            response = await client.post(
                f"{p.ingest_url}/v1/reports", json=body, headers={"X-Pinwatch-Key": INGEST_KEY}
            )
        assert response.status_code == 202, response.text
    await p.wait_inserted(len(traffic.sent))


async def ask(api: httpx.AsyncClient, **params: Any) -> dict:
    response = await api.get(
        f"/v1/rollout/{TEST_HOST}",
        params={"since": "1h", **params},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def same(got: list[dict], want: list[dict]) -> bool:
    """Lists of slices equal, shares compared as floats."""
    return len(got) == len(want) and all(
        g == pytest.approx(w) for g, w in zip(got, want, strict=False)
    )


def check_numbers(answer: dict, traffic: Traffic, candidates: list[str], roles: dict) -> None:
    sent = traffic.sent
    assert answer["reports"] == sum(s.count for s in sent)
    assert answer["devices"] == traffic.devices(sent)
    assert answer["networks"] == len({s.prefix for s in sent})
    assert answer["would_fail"] == pytest.approx(traffic.expected_slice(sent, candidates))
    assert same(answer["by_app_version"], traffic.expected_by("app_version", candidates))
    assert same(answer["by_platform"], traffic.expected_by("platform", candidates))
    assert same(answer["by_network"], traffic.expected_networks(candidates))
    pins = {p["pin"]: p for p in answer["pins"]}
    expected = traffic.expected_pins(roles)
    assert set(pins) == set(expected)
    for pin, want in expected.items():
        got = {k: pins[pin][k] for k in want}
        assert got == pytest.approx(want), pin


def current_roles(ca: CertificateAuthority) -> dict[str, str]:
    return {ca.pin("primary"): "primary", ca.pin("backup"): "backup"}


async def deliver_nel_without_pins(p: Pipeline, n: int, stored_before: int) -> None:
    """Browser NEL reports for the host: successes and a pin failure, none carrying pins."""
    items = [nel_report(f"https://{TEST_HOST}/", "ok", age_ms=i) for i in range(n - 1)]
    items.append(nel_report(f"https://{TEST_HOST}/", "tls.cert.pinned_key_not_in_cert_chain"))
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{p.ingest_url}/v1/reports/nel",
            params={"key": INGEST_KEY},
            content=json.dumps(items),
            headers={"Content-Type": "application/reports+json"},
        )
    assert response.status_code == 202, response.text
    await p.wait_inserted(stored_before + n)


async def test_clean_rollout_is_ready(
    api: httpx.AsyncClient, pipeline: Pipeline, ca: CertificateAuthority
) -> None:
    traffic = Traffic.clean(ca)
    await deliver(pipeline, traffic)
    # Reports without pins say nothing about the served keys: they change no number below.
    await deliver_nel_without_pins(pipeline, 40, stored_before=len(traffic.sent))
    answer = await ask(api)
    check_numbers(answer, traffic, [ca.pin("primary"), ca.pin("backup")], current_roles(ca))
    assert answer["verdict"] == {"ready": True, "reasons": []}
    assert answer["method"] == "rollup"
    assert answer["unobserved_candidates"] == [ca.pin("backup")]
    assert answer["surprise_pins"] == []
    proxy = next(p for p in answer["pins"] if p["pin"] == ca.pin("proxy"))
    assert proxy["interception"] and proxy["role"] == "none"
    # Filters narrow every number to the slice asked for.
    ios = await ask(api, platform="ios", app_version="5.2.0")
    only = [s for s in traffic.sent if s.platform == "ios" and s.app_version == "5.2.0"]
    assert ios["filters"] == {"app_version": "5.2.0", "platform": "ios"}
    assert ios["reports"] == sum(s.count for s in only)
    assert ios["devices"] == traffic.devices(only)


async def test_surprise_edge_chain_is_not_ready(
    api: httpx.AsyncClient, pipeline: Pipeline, ca: CertificateAuthority
) -> None:
    traffic = Traffic.clean(ca).with_surprise_edge()
    await deliver(pipeline, traffic)
    answer = await ask(api)
    check_numbers(answer, traffic, [ca.pin("primary"), ca.pin("backup")], current_roles(ca))
    rotated = ca.pin("rotated")
    [surprise] = answer["surprise_pins"]
    assert (surprise["pin"], surprise["devices"], surprise["networks"]) == (rotated, 6, 3)
    assert surprise["reports"] == 12
    assert 1 <= len(surprise["evidence"]) <= pipeline.settings.rollout_evidence_samples
    sample = surprise["evidence"][0]
    assert sample["root"] == "public"
    assert [c["subject"] for c in sample["certificates"]] == [
        f"CN={TEST_HOST}",
        "CN=pinwatch Test Issuing CA",
        "CN=pinwatch Test Public Root CA",
    ]
    assert sample["certificates"][0]["issuer"] == "CN=pinwatch Test Issuing CA"
    assert sample["certificates"][0]["pin"] == rotated
    assert sample["certificates"][0]["not_after"] == "2035-12-30T00:00:00Z"
    verdict = answer["verdict"]
    assert not verdict["ready"]
    codes = {(r["code"], r["subject"]) for r in verdict["reasons"]}
    assert ("would_fail_share", "") in codes
    assert ("surprise_pin", rotated) in codes
    # 6 of 44 devices: every version and platform carries some of the edge's devices.
    assert {s for c, s in codes if c == "group_would_fail"} == {
        "app version=5.0.0",
        "app version=5.1.0",
        "app version=5.2.0",
        "platform=ios",
        "platform=android",
    }
    assert "too_few_devices" not in {c for c, _ in codes}


async def test_staged_enforcement_compares_the_enforced_cohort_with_report_only(
    api: httpx.AsyncClient, pipeline: Pipeline, ca: CertificateAuthority
) -> None:
    """Six devices enforce (a staged cohort), two of them fail on the chain report-only
    devices pass: the answer shows both cohorts and the gap the alert's margin is held to."""
    traffic = Traffic.clean(ca)
    for n in range(6):
        network = f"127.78.{n % 3}.1"
        traffic.add(
            f"enforcing-{n}",
            "5.2.0",
            "ios",
            network,
            ca.chain("primary"),
            counts=(10,),
            enforced=True,
        )
        if n < 2:
            traffic.add(
                f"enforcing-{n}",
                "5.2.0",
                "ios",
                network,
                ca.chain("primary"),
                counts=(5,),
                result="pin_mismatch",
                enforced=True,
            )
    await deliver(pipeline, traffic)
    answer = await ask(api)
    report_only = [s for s in traffic.sent if not s.enforced]
    ro_validations = sum(s.count for s in report_only)
    ro_mismatches = sum(
        s.count for s in report_only if s.result == "pin_mismatch" and s.cause != INTERCEPTION
    )
    assert answer["cohorts"] == [
        {
            "cohort": "enforced",
            "validations": 70,
            "mismatches": 10,
            "mismatch_share": pytest.approx(10 / 70),
        },
        {
            "cohort": "report_only",
            "validations": ro_validations,
            "mismatches": ro_mismatches,
            "mismatch_share": pytest.approx(ro_mismatches / ro_validations),
        },
    ]
    assert answer["cohort_gap"] == pytest.approx(10 / 70 - ro_mismatches / ro_validations)
    text = render_text(answer)
    assert "staged enforcement: pin mismatches by cohort" in text
    assert f"enforced cohort +{answer['cohort_gap'] * 100:.2f} points" in text
    # Report-only traffic alone: one cohort, no gap, and no section in the text.
    only = await ask(api, app_version="5.0.0")
    assert [c["cohort"] for c in only["cohorts"]] == ["report_only"]
    assert only["cohort_gap"] is None and "staged enforcement" not in render_text(only)


async def test_candidate_pin_set_that_strands_an_app_version(
    api: httpx.AsyncClient, pipeline: Pipeline, ca: CertificateAuthority
) -> None:
    traffic = Traffic.clean(ca, version_5_0_on_backup=True)
    await deliver(pipeline, traffic)
    today = await ask(api)
    assert today["verdict"]["ready"] is True  # the current set keeps the backup: all pass
    answer = await ask(api, pin_set="next")
    candidates = [ca.pin("primary"), NEXT_BACKUP]
    check_numbers(answer, traffic, candidates, {ca.pin("primary"): "primary"})
    assert answer["pin_set"]["name"] == "next"
    assert answer["unobserved_candidates"] == [NEXT_BACKUP]
    v50 = next(s for s in answer["by_app_version"] if s["value"] == "5.0.0")
    assert v50["would_fail_share"] == 1.0 and v50["would_fail_devices"] == 12
    reasons = answer["verdict"]["reasons"]
    assert not answer["verdict"]["ready"]
    # Only release 5.0.0 is stranded; both platforms carry a third of its devices.
    assert [r["subject"] for r in reasons if r["code"] == "group_would_fail"] == [
        "app version=5.0.0",
        "platform=android",
        "platform=ios",
    ]
    assert any(r["code"] == "would_fail_share" for r in reasons)
    # The backup key is served from a public chain the set no longer pins: a surprise pin too.
    assert [s["pin"] for s in answer["surprise_pins"]] == [ca.pin("backup")]
    # The same question by hand (pin=) gives the same answer.
    by_hand = await ask(api, pin=[ca.pin("primary"), f"backup:{NEXT_BACKUP}"])
    assert by_hand["would_fail"] == answer["would_fail"]
    assert by_hand["by_app_version"] == answer["by_app_version"]


async def test_candidate_pinning_the_intermediate_reads_full_chains(
    api: httpx.AsyncClient, pipeline: Pipeline, ca: CertificateAuthority
) -> None:
    """Pin the issuing CA's key: a chain passes whatever its leaf, so the rollup's leaf pins
    cannot decide and the answer must come from the raw table's observed pins."""
    traffic = Traffic.clean(ca).with_surprise_edge()
    await deliver(pipeline, traffic)
    intermediate = ca.pin("intermediate")
    answer = await ask(api, pin=[intermediate, f"backup:{NEXT_BACKUP}"])
    assert answer["method"] == "raw"
    check_numbers(
        answer,
        traffic,
        [intermediate, NEXT_BACKUP],
        {ca.pin("primary"): "primary", ca.pin("rotated"): "primary"},
    )
    assert answer["surprise_pins"] == []
    assert answer["would_fail"]["would_fail_devices"] == 0


async def test_admin_token_is_required(api: httpx.AsyncClient) -> None:
    url = f"/v1/rollout/{TEST_HOST}"
    missing = await api.get(url)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await api.get(url, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"since": "yesterday"}, 400, "since: 'yesterday' is neither a duration"),
        ({"pin": "abc"}, 400, "pin: 'abc' is not a base64 SHA-256 SPKI pin"),
        ({"pin_set": "later"}, 400, "pin_set: 'later' is not a pin set"),
    ],
)
async def test_bad_questions_are_named(
    api: httpx.AsyncClient, params: dict, status: int, message: str
) -> None:
    response = await api.get(
        f"/v1/rollout/{TEST_HOST}", params=params, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == status
    assert response.json()["detail"].startswith(message)


async def test_unknown_host_needs_pins(api: httpx.AsyncClient) -> None:
    response = await api.get(
        "/v1/rollout/elsewhere.example", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 404
    assert "not in the pin policy" in response.json()["detail"]


async def test_command_prints_table_json_and_html_report(
    api: httpx.AsyncClient,
    pipeline: Pipeline,
    ca: CertificateAuthority,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`pinwatch rollout HOST` asks the consumer's API: exit 3 when not ready, the same numbers
    as the API in --json, and a self-contained HTML report."""
    traffic = Traffic.clean(ca).with_surprise_edge()
    await deliver(pipeline, traffic)
    expected = await ask(api)
    report = tmp_path / "review.html"

    def command(*argv: str) -> int:
        args = build_parser().parse_args(
            ["rollout", TEST_HOST, "--url", pipeline.consumer_url, "--since", "1h", *argv]
        )
        return args._module.run(args, pipeline.settings)

    assert await asyncio.to_thread(command, "--json", "--html", str(report)) == 3
    answer = json.loads(capsys.readouterr().out)
    for key in (
        "reports",
        "devices",
        "networks",
        "would_fail",
        "by_app_version",
        "by_network",
        "surprise_pins",
        "verdict",
    ):
        assert answer[key] == expected[key], key
    page = report.read_text()
    assert "NOT READY" in page and page.count("<svg") >= 3
    assert ca.pin("rotated") in page and "CN=pinwatch Test Public Root CA" in page
    assert "<script" not in page and "src=" not in page and "href=" not in page

    assert await asyncio.to_thread(command) == 3
    text = capsys.readouterr().out
    assert "verdict: NOT READY" in text
    assert f"surprise pin {ca.pin('rotated')}: 6 devices, 3 networks" in text
    assert "127.79.0.0/24" in text  # the edge's networks are in the breakdown

    narrowed = await asyncio.to_thread(
        command, "--app-version", "5.0.0", "--pin-set", "current", "--json"
    )
    # 5.0.0 alone: two of its fourteen devices hit the edge, still not ready.
    assert narrowed == 3
    only = json.loads(capsys.readouterr().out)
    assert (only["devices"], only["would_fail"]["would_fail_devices"]) == (14, 2)


def test_command_says_when_the_api_is_unreachable(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["rollout", TEST_HOST, "--url", "http://127.0.0.1:9"])
    assert args._module.run(args, make_settings()) == 1
    assert "cannot reach the query API at http://127.0.0.1:9" in capsys.readouterr().err
