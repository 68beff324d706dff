"""Rollout analysis without engines: question parsing, pin sets, query building, verdict rules,
rendering."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import pytest

from consumers.rollout import sql
from consumers.rollout.html import render_html
from consumers.rollout.request import RolloutRequestError, build_request, parse_since
from consumers.rollout.text import render_text
from consumers.rollout.verdict import Group, SurprisePin, Thresholds, decide
from pinwatch.policy import parse_policy

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def pin(name: str) -> str:
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


POLICY = parse_policy(
    f"""
apps:
  - id: com.acme.app
    ingest_keys: ["0123456789abcdef-key"]
hosts:
  - host: api.acme.com
    include_subdomains: true
    pins:
      - {{sha256: "{pin("leaf")}", role: primary, label: leaf-2026}}
      - {{sha256: "{pin("backup")}", role: backup, label: offline-1}}
    candidate_pin_sets:
      next:
        - {{sha256: "{pin("leaf")}", role: primary}}
        - {{sha256: "{pin("new-backup")}", role: backup}}
"""
)


def test_since_accepts_durations_and_instants() -> None:
    assert parse_since("30m", NOW) == NOW - dt.timedelta(minutes=30)
    assert parse_since("7d", NOW) == NOW - dt.timedelta(days=7)
    assert parse_since("2026-11-27T00:00:00Z", NOW) == dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    assert parse_since("2026-11-27T00:00:00", NOW) == dt.datetime(2026, 11, 27, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "message"),
    [("yesterday", "neither a duration"), ("0h", "positive"), ("2030-01-01", "not in the past")],
)
def test_since_rejects_what_it_cannot_place(value: str, message: str) -> None:
    with pytest.raises(RolloutRequestError, match=message):
        parse_since(value, NOW)


def test_pin_set_defaults_to_the_policy_and_names_candidates() -> None:
    current = build_request(POLICY, "API.acme.com.", since="1d", now=NOW)
    assert current.host == "api.acme.com"
    assert current.pin_set.name == "current"
    assert [(p.role, p.label) for p in current.pin_set.pins] == [
        ("primary", "leaf-2026"),
        ("backup", "offline-1"),
    ]
    nxt = build_request(POLICY, "eu.api.acme.com", since="1d", pin_set="next", now=NOW)
    assert nxt.pin_set.hashes == [pin("leaf"), pin("new-backup")]


def test_pins_by_hand_take_roles_in_order_or_as_prefix() -> None:
    req = build_request(
        POLICY, "other.example", since="1d", pins=[pin("a"), f"primary:{pin('b')}"], now=NOW
    )
    assert [(p.sha256, p.role) for p in req.pin_set.pins] == [
        (pin("a"), "primary"),
        (pin("b"), "primary"),
    ]
    assert req.pin_set.role_of([pin("x"), pin("b")]) == "primary"
    assert req.pin_set.role_of([pin("x")]) == "none"


@pytest.mark.parametrize(
    ("kwargs", "message", "status"),
    [
        ({"pins": ["not-a-pin"]}, "not a base64 SHA-256 SPKI pin", 400),
        ({"pins": [f"spare:{pin('a')}"]}, "role 'spare' must be primary or backup", 400),
        ({"pins": [pin("a")], "pin_set": "next"}, "either pin= or pin_set=", 400),
        ({"pin_set": "later"}, "not a pin set of api.acme.com: current, next", 400),
    ],
)
def test_bad_questions_name_the_field(kwargs: dict, message: str, status: int) -> None:
    with pytest.raises(RolloutRequestError, match=message) as info:
        build_request(POLICY, "api.acme.com", since="1d", now=NOW, **kwargs)
    assert info.value.status == status


def test_unknown_host_without_pins_is_not_found() -> None:
    with pytest.raises(RolloutRequestError, match="not in the pin policy") as info:
        build_request(POLICY, "elsewhere.example", since="1d", now=NOW)
    assert info.value.status == 404


def test_queries_bind_every_value_and_pick_the_would_fail_test() -> None:
    hostile = "x' OR 1=1 --"
    req = build_request(POLICY, "api.acme.com", since="1d", app=hostile, platform="ios", now=NOW)
    rollup = sql.groups_query(sql.hourly_source(), req)
    assert hostile not in rollup.sql
    assert rollup.parameters["app_id"] == hostile
    assert rollup.parameters["platform"] == "ios"
    assert "app_version =" not in rollup.sql  # no filter that was not asked for
    assert "{db}.rollout_hourly" in rollup.sql and "uniqCombinedMergeIf(12)" in rollup.sql
    assert "hour >= toStartOfHour({since:DateTime64(3, 'UTC')})" in rollup.sql
    assert "leaf_pin NOT IN {candidates:Array(String)}" in rollup.sql
    assert rollup.parameters["candidates"] == req.pin_set.hashes
    chain = sql.pins_query(sql.raw_source(chain=True), req, 10)
    assert "{db}.reports" in chain.sql
    assert "hasAny(observed_pins, {candidates:Array(String)})" in chain.sql
    assert "LIMIT 10" in chain.sql


T = Thresholds(
    max_would_fail_share=0.01,
    min_devices=100,
    min_group_devices=10,
    surprise_min_networks=3,
    max_interception_share=0.05,
)


def group(value: str, devices: int, server_failing: int = 0, intercepted: int = 0) -> Group:
    return Group(value, devices * 2, devices, server_failing, intercepted)


def test_clean_rollout_is_ready() -> None:
    total = group("", 1000, server_failing=5, intercepted=20)
    v = decide(total, [group("5.0", 500, 3)], [group("ios", 600, 4)], [], T)
    assert v.ready and v.reasons == []


def test_every_reason_is_stated() -> None:
    total = group("", 90, server_failing=9, intercepted=9)
    versions = [group("4.9", 30, 9), group("5.0", 5, 5), group("5.1", 55)]
    surprise = [SurprisePin("p1", 40, 9, 3), SurprisePin("p2", 4, 2, 2)]
    v = decide(total, versions, [group("ios", 90, 9)], surprise, T)
    assert not v.ready
    codes = [(r.code, r.subject) for r in v.reasons]
    assert codes == [
        ("too_few_devices", ""),
        ("would_fail_share", ""),
        ("group_would_fail", "app version=4.9"),  # 5.0 has too few devices to judge alone
        ("group_would_fail", "platform=ios"),
        ("surprise_pin", "p1"),  # p2 comes from too few networks
        ("interception", ""),
    ]
    assert v.reasons[1].value == pytest.approx(0.1)
    assert "10.00% of devices (9 of 90)" in v.reasons[1].message


def sample_answer() -> dict:
    s = {
        "value": "<5.0>",
        "reports": 4,
        "devices": 2,
        "would_fail_devices": 1,
        "would_fail_share": 0.5,
        "intercepted_devices": 0,
        "interception_share": 0.0,
    }
    return {
        "host": "api.acme.com",
        "since": "a",
        "until": "b",
        "filters": {"app": "<script>"},
        "pin_set": {
            "name": "current",
            "pins": [{"sha256": pin("leaf"), "role": "primary", "label": "<b>"}],
        },
        "method": "rollup",
        "reports": 4,
        "devices": 2,
        "networks": 1,
        "would_fail": s,
        "by_app_version": [s],
        "by_platform": [],
        "by_network": [],
        "pins": [
            {
                "pin": pin("leaf"),
                "role": "primary",
                "label": "",
                "reports": 4,
                "devices": 2,
                "networks": 1,
                "report_share": 1.0,
                "device_share": 1.0,
                "first_seen": "a",
                "last_seen": "b",
                "would_fail": False,
                "interception": False,
            }
        ],
        "unobserved_candidates": [],
        "surprise_pins": [],
        "verdict": {
            "ready": False,
            "reasons": [
                {"code": "x", "message": "<img src=x>", "value": 1, "threshold": 0, "subject": ""}
            ],
        },
        "thresholds": {"max_would_fail_share": 0.001},
        "query_seconds": 0.1,
    }


def test_html_report_is_self_contained_and_escaped() -> None:
    page = render_html(sample_answer())
    assert "<svg" in page and "NOT READY" in page
    assert "<script>" not in page and "<img" not in page and "&lt;img src=x&gt;" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_text_report_shows_pins_and_reasons() -> None:
    text = render_text(sample_answer())
    assert "verdict: NOT READY" in text and "<img src=x>" in text
    assert "50.00%" in text
