"""The live policy's levers: every change checked against the policy file before it is
recorded, and the document each app is served."""

from __future__ import annotations

import pytest

from pinwatch.cohort import enforces
from pinwatch.livepolicy import (
    Change,
    ChangeError,
    LiveState,
    adopt_policy_file,
    apply_change,
    client_enforces,
    document_claims,
    effective,
    policy_sha256,
)
from pinwatch.policy import load_policy, parse_policy
from pinwatch.resources import EXAMPLE_POLICY
from pinwatch.vocabulary import Phase

APP, WEB, API, CDN = "com.acme.app", "com.acme.web", "api.acme.test", "cdn.acme.test"
POLICY = load_policy(EXAMPLE_POLICY)


def started() -> LiveState:
    applied = adopt_policy_file(POLICY, LiveState(), "test")
    assert applied is not None
    return applied.state


def change(state: LiveState, **fields: object) -> LiveState:
    return apply_change(POLICY, state, Change(actor="alice@laptop", **fields)).state  # type: ignore[arg-type]


def refused(state: LiveState, status: int, field: str, match: str, **fields: object) -> None:
    with pytest.raises(ChangeError, match=match) as caught:
        change(state, **fields)
    assert (caught.value.status, caught.value.field) == (status, field)


def test_the_first_start_records_the_file_and_the_file_decides_until_a_lever_does() -> None:
    state = started()
    assert (state.version, state.policy_sha256) == (1, policy_sha256(POLICY))
    assert adopt_policy_file(POLICY, state, "again") is None  # the same file: nothing new
    assert effective(POLICY, state, API).phase is Phase.ENFORCE
    assert effective(POLICY, state, API).percent == 100
    assert effective(POLICY, state, CDN).percent == 0


def test_set_phase_stages_enforcement_and_each_change_is_a_new_version() -> None:
    state = change(started(), action="set_phase", host=CDN, phase="enforce", percent=1)
    assert (state.version, state.hosts[CDN].phase, state.hosts[CDN].percent) == (2, "enforce", 1)
    state = change(state, action="set_phase", host="CDN.acme.test.", phase="enforce", percent=10)
    assert (state.version, state.hosts[CDN].percent) == (3, 10)
    applied = apply_change(
        POLICY, state, Change("set_phase", "bob", "rollback", host=CDN, phase="report_only")
    )
    assert applied.what == {"phase": ["enforce", "report_only"], "percent": [10, 0]}
    assert (applied.state.version, applied.actor, applied.reason) == (4, "bob", "rollback")


def test_kill_and_unkill_per_app_and_per_host() -> None:
    state = change(started(), action="kill", app=APP, host=API, reason="rotation broke pinning")
    assert state.killed(APP, API) is not None and state.killed(APP) is None
    state = change(state, action="kill", app=APP, reason="everything")
    claims = document_claims(POLICY, state, APP)
    assert claims["kill_switch"] is True
    assert [h["kill_switch"] for h in claims["hosts"]] == [True, False]
    assert document_claims(POLICY, state, WEB)["kill_switch"] is False  # another app
    state = change(state, action="unkill", app=APP)
    assert state.killed(APP) is None and state.killed(APP, API) is not None
    state = change(state, action="unkill", app=APP, host=API, reason="fixed")
    assert state.kills == () and state.version == 5


def test_bad_input_is_refused_naming_what_is_wrong() -> None:
    state = started()
    refused(
        state,
        404,
        "host",
        "unknown host 'nope.test'.*api.acme.test, cdn.acme.test",
        action="set_phase",
        host="nope.test",
        phase="enforce",
    )
    refused(state, 404, "app", "unknown app 'com.evil'", action="kill", app="com.evil", reason="x")
    refused(
        state, 404, "host", "unknown host", action="kill", app=APP, host="nope.test", reason="x"
    )
    for percent in (-1, 100.5, 150):
        refused(
            state,
            400,
            "percent",
            "from 0 to 100",
            action="set_phase",
            host=API,
            phase="enforce",
            percent=percent,
        )
    refused(
        state,
        400,
        "percent",
        "two decimals",
        action="set_phase",
        host=API,
        phase="enforce",
        percent=12.345,
    )
    refused(
        state,
        400,
        "percent",
        "enforce only",
        action="set_phase",
        host=CDN,
        phase="report_only",
        percent=10,
    )
    refused(
        state, 400, "phase", "report_only or enforce", action="set_phase", host=API, phase="off"
    )
    refused(state, 400, "reason", "needs a reason", action="kill", app=APP, reason=" ")
    refused(
        state, 409, "phase", "already enforce at 100", action="set_phase", host=API, phase="enforce"
    )
    refused(state, 409, "app", "is not killed", action="unkill", app=APP)
    killed = change(state, action="kill", app=APP, reason="r")
    refused(killed, 409, "app", "already killed", action="kill", app=APP, reason="again")
    refused(state, 400, "action", "unknown action", action="delete")
    with pytest.raises(ChangeError, match="actor"):
        apply_change(POLICY, state, Change("kill", " ", "r", app=APP))


def test_a_new_policy_file_is_a_new_version_and_drops_what_it_no_longer_names() -> None:
    state = change(started(), action="set_phase", host=CDN, phase="enforce", percent=5)
    state = change(state, action="kill", app=WEB, host=CDN, reason="r")
    smaller = parse_policy(EXAMPLE_POLICY.read_text().split("  - host: cdn.acme.test")[0])
    applied = adopt_policy_file(smaller, state, "pinwatch consume")
    assert applied is not None and applied.state.version == state.version + 1
    assert applied.state.hosts == {} and applied.state.kills == ()
    assert applied.what["dropped_host_settings"] == [CDN]
    assert applied.what["dropped_kills"] == [f"{WEB} on {CDN}"]


def test_the_document_names_pins_phase_percentage_cohort_and_report_settings() -> None:
    state = change(started(), action="set_phase", host=API, phase="enforce", percent=10)
    claims = document_claims(POLICY, state, APP)
    api = claims["hosts"][0]
    assert (claims["app"], claims["version"], claims["cohort"]["salt"]) == (APP, 2, APP)
    assert (api["host"], api["phase"], api["enforce_percent"]) == (API, "enforce", 10)
    assert api["include_subdomains"] is True
    assert [p["role"] for p in api["pins"]] == ["primary", "backup"]
    assert claims["report"] == {"url": "", "success_fraction": 1.0}
    salted = parse_policy(
        EXAMPLE_POLICY.read_text().replace(
            'ingest_keys: ["acme-app-demo-ingest-key-0001"]',
            'ingest_keys: ["acme-app-demo-ingest-key-0001"]\n    cohort_salt: salt-2027',
        )
    )
    assert document_claims(salted, state, APP)["cohort"]["salt"] == "salt-2027"


def test_the_client_rule_follows_phase_cohort_and_kill_switches() -> None:
    state = change(started(), action="set_phase", host=API, phase="enforce", percent=10)
    claims = document_claims(POLICY, state, APP)
    devices = [f"install-{n:04d}" for n in range(2000)]
    enforcing = [d for d in devices if client_enforces(claims, API, d)]
    assert enforcing == [d for d in devices if enforces(APP, API, d, 10)]
    assert 100 < len(enforcing) < 300
    assert not any(client_enforces(claims, CDN, d) for d in devices)  # report-only host
    killed = document_claims(POLICY, change(state, action="kill", app=APP, reason="r"), APP)
    assert not any(client_enforces(killed, API, d) for d in devices)
    host_killed = change(state, action="kill", app=APP, host=API, reason="r")
    assert not any(
        client_enforces(document_claims(POLICY, host_killed, APP), API, d) for d in devices
    )


def test_the_state_round_trips_through_json() -> None:
    state = change(started(), action="kill", app=APP, host=API, reason="r")
    state = change(state, action="set_phase", host=CDN, phase="enforce", percent=0.5)
    assert LiveState.from_json(state.to_json()) == state
