"""The traffic generator on its own: population, scenarios, payloads and the sender. What each
scenario does to the pipeline is in test_simulate_pipeline.py."""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

import orjson
import pytest
from cryptography import x509

from devstack.simulate import (
    SCENARIOS,
    PopulationConfig,
    build_population,
    generate,
    require_loopback,
)
from devstack.simulate.emit import NATIVE_PATH, NEL_PATH, TRUSTKIT_PATH
from devstack.simulate.scenarios import BAD_RELEASE_VERSION, WRONG_PIN, flood_device
from devstack.simulate.sender import NotLoopback
from devstack.simulate.timeline import Timeline, _parse_time, consumer_failures
from pinwatch.pins import spki_pin
from pinwatch.policy import load_policy
from tests.support.names import TEST_APP, TEST_HOST


def bodies(requests) -> list[dict]:
    return [orjson.loads(r.body) for r in requests]


def native_reports(requests) -> list[tuple[dict, dict]]:
    """(batch, report) for every report in native requests."""
    return [(b, rep) for b in bodies(requests) for rep in b["reports"]]


def test_population_is_deterministic_and_spreads_devices_over_networks(policy_file: Path):
    policy = load_policy(policy_file)
    config = PopulationConfig(devices=30, networks=3)
    one, two = build_population(policy, config, seed=7), build_population(policy, config, seed=7)
    assert [(d.id, d.version, d.platform) for d in one.devices] == [
        (d.id, d.version, d.platform) for d in two.devices
    ]
    prefixes = Counter(d.network.prefix for d in one.devices)
    assert prefixes == {"127.77.0.0/24": 10, "127.77.1.0/24": 10, "127.77.2.0/24": 10}
    assert {t.host for t in one.targets} == {h.host for h in policy.hosts}
    assert {d.app.id for d in one.devices} == set(policy.app_ids)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("devices", 0, "devices must be"),
        ("networks", 300, "networks must be"),
        ("client_format", "hpkp", "client format must be"),
        ("network_error_rate", 1.5, "network_error_rate"),
    ],
)
def test_population_config_names_what_is_wrong(field: str, value: object, message: str):
    with pytest.raises(ValueError, match=message):
        PopulationConfig(**{field: value})


def test_unknown_app_is_named(policy_file: Path):
    with pytest.raises(ValueError, match="com.nope"):
        build_population(load_policy(policy_file), PopulationConfig(apps=("com.nope",)))


def test_steady_state_is_successes_and_a_few_network_errors(population, chains):
    requests = list(generate(population, SCENARIOS["steady"], chains, intervals=3, changed=True))
    total = sum((r.expected for r in requests), Counter())
    assert total["pin:ok"] > 0
    assert total["pin:pin_mismatch"] == total["pin:chain_invalid"] == 0
    errors = sum(v for k, v in total.items() if k.startswith("error:"))
    assert 0 < errors < 0.05 * total["pin:ok"]
    # The payload says what the expectation says: counts sum up, pins are the pinned primary.
    reports = native_reports(requests)
    assert sum(r["count"] for _, r in reports if r["type"] == "pin_validation") == total["pin:ok"]
    primary = population.target(TEST_HOST).pins[0]
    assert all(
        r["observed_pins"][0] == primary for _, r in reports if r["type"] == "pin_validation"
    )


def test_nothing_changes_before_the_change_point(population, chains):
    for scenario in SCENARIOS.values():
        requests = generate(population, scenario, chains, intervals=1, changed=False)
        total = sum((r.expected for r in requests), Counter())
        assert total["pin:pin_mismatch"] == 0, scenario.name
        assert total["pin:ok:primary"] == total["pin:ok"], scenario.name


def test_planned_rotation_serves_the_backup_and_nothing_fails(population, chains):
    requests = list(
        generate(population, SCENARIOS["planned_rotation"], chains, intervals=2, changed=True)
    )
    total = sum((r.expected for r in requests), Counter())
    assert total["pin:ok:backup"] > 0 and total["pin:pin_mismatch"] == 0
    backup = population.target(TEST_HOST).pins[1]
    served = {
        r["observed_pins"][0]
        for _, r in native_reports(requests)
        if r["host"] == TEST_HOST and r["type"] == "pin_validation"
    }
    assert served == {backup}


def test_unplanned_rotation_fails_everywhere_with_a_public_chain(population, chains, ca):
    requests = list(
        generate(population, SCENARIOS["unplanned_rotation"], chains, intervals=2, changed=True)
    )
    failing = [r for r in requests if r.has_pin_failure]
    assert {r.source_address for r in failing} == {n.source_address for n in population.networks}
    for _, report in native_reports(failing):
        if report.get("result") != "pin_mismatch":
            continue
        assert report["host"] == TEST_HOST and report["enforced"] is True
        chain = [
            x509.load_der_x509_certificate(base64.b64decode(c)) for c in report["served_chain"]
        ]
        assert spki_pin(chain[0]) == ca.pin("rotated")
        assert chain[-1].subject == ca.public_root.subject
        assert report["observed_pins"] == [spki_pin(c) for c in chain]


def test_interception_hits_one_network_with_a_private_root(population, chains, ca):
    requests = list(
        generate(population, SCENARIOS["interception"], chains, intervals=2, changed=True)
    )
    failing = [r for r in requests if r.has_pin_failure]
    assert failing
    assert {r.source_address for r in failing} == {population.networks[0].source_address}
    roots = {
        spki_pin(x509.load_der_x509_certificate(base64.b64decode(rep["served_chain"][-1])))
        for _, rep in native_reports(failing)
        if rep.get("result") == "pin_mismatch"
    }
    assert roots == {ca.pin("private_root")}


def test_dns_outage_is_network_errors_not_pin_failures(population, chains):
    requests = list(
        generate(population, SCENARIOS["dns_outage"], chains, intervals=2, changed=True)
    )
    total = sum((r.expected for r in requests), Counter())
    assert total["error:dns"] > 0 and total["pin:pin_mismatch"] == 0
    api = [rep for _, rep in native_reports(requests) if rep["host"] == TEST_HOST]
    assert {rep["type"] for rep in api} == {"network_error"}


def test_device_flood_is_one_device_sending_unaggregated_failures(population, chains):
    requests = list(
        generate(population, SCENARIOS["device_flood"], chains, intervals=1, changed=True)
    )
    failing = [r for r in requests if r.has_pin_failure]
    assert {r.device for r in failing} == {flood_device(population).id}
    reports = [rep for _, rep in native_reports(failing) if rep.get("result") == "pin_mismatch"]
    assert len(reports) > 100 and {rep["count"] for rep in reports} == {1}
    # Even a flood stays within the batch bound ingest enforces.
    assert max(len(b["reports"]) for b in bodies(failing)) <= 500


def test_bad_release_fails_only_the_new_version_while_the_primary_is_served(population, chains):
    requests = list(
        generate(population, SCENARIOS["bad_release"], chains, intervals=2, changed=True)
    )
    primary = population.target(TEST_HOST).pins[0]
    versions_failing, versions_ok = set(), set()
    for batch, rep in native_reports(requests):
        if rep.get("type") != "pin_validation":
            continue
        if rep["result"] == "pin_mismatch":
            versions_failing.add(batch["app"]["version"])
            assert rep["observed_pins"][0] == primary
        elif rep["host"] == TEST_HOST:
            versions_ok.add(batch["app"]["version"])
    assert versions_failing == {BAD_RELEASE_VERSION}
    assert BAD_RELEASE_VERSION not in versions_ok and versions_ok
    assert WRONG_PIN not in {p for p in population.target(TEST_HOST).pins}


def test_trustkit_devices_send_failures_as_trustkit_does(policy_file, chains, ca):
    population = build_population(
        load_policy(policy_file), PopulationConfig(devices=6, networks=2, client_format="trustkit")
    )
    steady = list(generate(population, SCENARIOS["steady"], chains, intervals=1, changed=True))
    assert steady == []  # TrustKit reports failures only
    requests = list(
        generate(population, SCENARIOS["unplanned_rotation"], chains, intervals=1, changed=True)
    )
    assert requests and all(r.path.startswith(TRUSTKIT_PATH + "?key=") for r in requests)
    body = orjson.loads(requests[0].body)
    assert body["validation-result"] == 1 and body["hostname"] == TEST_HOST
    leaf = x509.load_pem_x509_certificate(body["validated-certificate-chain"][0].encode())
    assert spki_pin(leaf) == ca.pin("rotated")
    assert body["known-pins"] == [f'pin-sha256="{p}"' for p in population.target(TEST_HOST).pins]
    assert "X-Pinwatch-Key" not in requests[0].headers  # TrustKit cannot send headers


def test_nel_devices_send_one_report_per_request(policy_file, chains):
    population = build_population(
        load_policy(policy_file), PopulationConfig(devices=4, networks=2, client_format="nel")
    )
    requests = list(
        generate(population, SCENARIOS["unplanned_rotation"], chains, intervals=1, changed=True)
    )
    assert all(r.path.startswith(NEL_PATH + "?key=") for r in requests)
    assert requests[0].headers["Content-Type"] == "application/reports+json"
    reports = [rep for r in requests for rep in orjson.loads(r.body)]
    total = sum((r.expected for r in requests), Counter())
    assert len(reports) == total["reports"]
    types = Counter(rep["body"]["type"] for rep in reports)
    assert types["tls.cert.pinned_key_not_in_cert_chain"] == total["pin:pin_mismatch"] > 0
    assert types["ok"] == total["pin:ok"]


def test_mixed_population_uses_every_format(policy_file, chains):
    population = build_population(
        load_policy(policy_file), PopulationConfig(devices=60, client_format="mixed")
    )
    requests = list(
        generate(population, SCENARIOS["unplanned_rotation"], chains, intervals=1, changed=True)
    )
    assert {r.path.split("?")[0] for r in requests} == {NATIVE_PATH, TRUSTKIT_PATH, NEL_PATH}


def test_sender_refuses_anything_but_loopback():
    assert require_loopback("http://127.0.0.1:8787/") == "http://127.0.0.1:8787"
    assert require_loopback("http://localhost:1") == "http://localhost:1"
    with pytest.raises(NotLoopback, match="203.0.113.7"):
        require_loopback("http://203.0.113.7:8787")
    with pytest.raises(NotLoopback):
        require_loopback("https://ingest.example.com")


def _claims(policy_file: Path, *changes: dict) -> dict[str, dict]:
    """Every app's remote policy document after these levers (what the edge would sign)."""
    from pinwatch.livepolicy import (
        Change,
        LiveState,
        adopt_policy_file,
        apply_change,
        document_claims,
    )

    policy = load_policy(policy_file)
    applied = adopt_policy_file(policy, LiveState(), "test")
    assert applied is not None
    state = applied.state
    for change in changes:
        state = apply_change(policy, state, Change(actor="t", **change)).state
    return {app: document_claims(policy, state, app) for app in policy.app_ids}


def test_devices_obey_a_kill_switch_from_their_policy_document(population, chains, policy_file):
    rotation = SCENARIOS["unplanned_rotation"]
    before = list(generate(population, rotation, chains, intervals=1, changed=True))
    assert sum((r.expected for r in before), Counter())["enforced:pin_mismatch"] > 0
    killed = _claims(policy_file, {"action": "kill", "app": TEST_APP, "reason": "r"})
    for device in population.devices:
        device.policy = killed[device.app.id]
    after = list(generate(population, rotation, chains, intervals=1, changed=True))
    total = sum((r.expected for r in after), Counter())
    assert total["pin:pin_mismatch"] > 0  # still reported, as report-only...
    apps = {d.id: d.app.id for d in population.devices}
    for request in after:
        batch = orjson.loads(request.body)
        enforced = [r["enforced"] for r in batch.get("reports", []) if "enforced" in r]
        if apps[request.device] == TEST_APP:
            assert not any(enforced)  # ...but no device of the killed app enforces
    killed_app_failures = [
        r for r in after if apps[r.device] == TEST_APP and r.has_enforced_failure
    ]
    assert killed_app_failures == []


def test_devices_enforce_by_cohort_at_the_documented_percentage(policy_file, chains):
    from pinwatch.cohort import enforces

    population = build_population(load_policy(policy_file), PopulationConfig(devices=1000))
    staged = _claims(
        policy_file, {"action": "set_phase", "host": TEST_HOST, "phase": "enforce", "percent": 10}
    )
    for device in population.devices:
        device.policy = staged[device.app.id]
    target = population.target(TEST_HOST)
    enforcing = [d for d in population.devices if d.enforces(target)]
    assert enforcing == [d for d in population.devices if enforces(d.app.id, TEST_HOST, d.id, 10)]
    assert 60 < len(enforcing) < 140
    without = build_population(load_policy(policy_file), PopulationConfig(devices=10))
    assert all(d.enforces(target) for d in without.devices)  # no document: as built (enforce)


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
