"""The live policy's owner, the consumer's admin API on real ClickHouse (chDB): each lever is
checked, applied and written with its audit row in one insert; the newest row is the state the
edge polls; bad input is refused naming what is wrong and changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from consumers.api import create_api
from consumers.policy import audit
from consumers.policy.audit import AUDIT_COLUMNS
from consumers.policy.owner import PolicyOwner
from pinwatch.livepolicy import Change, LiveState, apply_change
from pinwatch.policy import load_policy
from pinwatch.settings import Settings
from tests.support.errors import assert_error
from tests.support.names import OTHER_APP, REPORT_ONLY_HOST, TEST_APP, TEST_HOST
from tests.support.policy import Owner, serve_owner
from tests.support.serve import serve


@pytest.fixture
async def owner(make_settings: Callable[..., Settings]) -> AsyncIterator[Owner]:
    async with serve_owner(make_settings()) as running:
        yield running


async def test_the_audit_table_has_the_columns_the_owner_writes(owner: Owner) -> None:
    rows = await owner.store.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} "
        "AND table = 'policy_audit' ORDER BY position",
        {"db": owner.settings.clickhouse_database},
    )
    assert tuple((str(n), str(t)) for n, t in rows) == AUDIT_COLUMNS


async def test_levers_are_applied_audited_and_served_as_the_newest_state(owner: Owner) -> None:
    first = await owner.client.get("/v1/admin/policy/state")
    assert first.status_code == 200
    assert first.json()["state"]["version"] == 1  # the policy file, recorded on first use
    steps = [
        {"action": "set_phase", "host": REPORT_ONLY_HOST, "phase": "enforce", "percent": 10},
        {"action": "kill", "app": TEST_APP, "host": TEST_HOST, "reason": "rotation broke it"},
        {"action": "kill", "app": OTHER_APP, "reason": "test kill"},
        {"action": "unkill", "app": OTHER_APP, "reason": "over"},
    ]
    for number, body in enumerate(steps, start=2):
        response = await owner.change(**body)
        assert response.status_code == 200, response.text
        assert response.json()["version"] == number
    state = (await owner.client.get("/v1/admin/policy/state")).json()
    assert state["state"]["version"] == 5
    assert state["state"]["hosts"][REPORT_ONLY_HOST] == {"phase": "enforce", "percent": 10.0}
    app_doc = state["documents"][TEST_APP]
    assert [h["kill_switch"] for h in app_doc["hosts"]] == [True, False]
    assert state["documents"][OTHER_APP]["kill_switch"] is False

    history = (await owner.client.get("/v1/admin/policy/history")).json()
    assert [r["version"] for r in history] == [5, 4, 3, 2, 1]
    assert [r["action"] for r in history] == ["unkill", "kill", "kill", "set_phase", "policy_file"]
    kill = history[2]
    assert (kill["actor"], kill["app"], kill["host"], kill["reason"]) == (
        "tester@ci",
        TEST_APP,
        TEST_HOST,
        "rotation broke it",
    )
    assert kill["origin"] == "127.0.0.1" and kill["changed_at"].endswith("Z")
    assert history[3]["what"] == {"phase": ["report_only", "enforce"], "percent": [0.0, 10.0]}
    # Filters keep what reaches an app or host (a host's phase reaches every app).
    only = (await owner.client.get("/v1/admin/policy/history", params={"app": OTHER_APP})).json()
    assert [r["version"] for r in only] == [5, 4, 2, 1]
    rows = await owner.store.scalar("SELECT count() FROM {db}.policy_audit")
    assert rows == 5


async def test_an_unchanged_state_is_a_304(owner: Owner) -> None:
    first = await owner.client.get("/v1/admin/policy/state")
    etag = first.headers["etag"]
    again = await owner.client.get("/v1/admin/policy/state", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    await owner.change(action="kill", app=TEST_APP, reason="r")
    changed = await owner.client.get("/v1/admin/policy/state", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


BAD = [
    (
        {"action": "set_phase", "host": "nope.test", "phase": "enforce"},
        404,
        "not_found",
        "host",
        "unknown host 'nope.test'",
    ),
    (
        {"action": "kill", "app": "com.nope", "reason": "r"},
        404,
        "not_found",
        "app",
        "unknown app 'com.nope'",
    ),
    (
        {"action": "set_phase", "host": TEST_HOST, "phase": "enforce", "percent": 101},
        400,
        "bad_request",
        "percent",
        "from 0 to 100",
    ),
    (
        {"action": "set_phase", "host": TEST_HOST, "phase": "enforce", "percent": -5},
        400,
        "bad_request",
        "percent",
        "from 0 to 100",
    ),
    (
        {"action": "set_phase", "host": TEST_HOST, "phase": "maybe"},
        400,
        "bad_request",
        "phase",
        "report_only or enforce",
    ),
    ({"action": "kill", "app": TEST_APP}, 400, "bad_request", "reason", "needs a reason"),
    ({"action": "unkill", "app": TEST_APP}, 409, "conflict", "app", "is not killed"),
    (
        {"action": "set_phase", "host": TEST_HOST, "phase": "enforce"},
        409,
        "conflict",
        "phase",
        "already enforce at 100",
    ),
    ({"action": "explode"}, 400, "bad_request", "action", "Input should be"),
    (
        {"action": "kill", "app": TEST_APP, "reason": "r", "extra": 1},
        400,
        "bad_request",
        "extra",
        "Extra inputs",
    ),
]


@pytest.mark.parametrize(("body", "status", "error", "field", "says"), BAD)
async def test_bad_input_is_refused_and_changes_nothing(
    owner: Owner, body: dict, status: int, error: str, field: str, says: str
) -> None:
    before = (await owner.client.get("/v1/admin/policy/state")).json()
    detail = assert_error(await owner.change(**body), status, error, field)
    assert says in detail
    assert (await owner.client.get("/v1/admin/policy/state")).json() == before
    assert await owner.store.scalar("SELECT count() FROM {db}.policy_audit") == 1


async def test_the_admin_token_is_required(owner: Owner) -> None:
    async with httpx.AsyncClient(base_url=owner.url) as anonymous:
        for method, path in (("GET", "/state"), ("GET", "/history"), ("POST", "/changes")):
            response = await anonymous.request(method, f"/v1/admin/policy{path}", json={})
            assert_error(response, 401, "unauthorized", "Authorization")
            wrong = {"Authorization": "Bearer not-the-token"}
            response = await anonymous.request(
                method, f"/v1/admin/policy{path}", json={}, headers=wrong
            )
            assert_error(response, 403, "forbidden", "Authorization")


async def test_two_owners_racing_for_one_version_the_first_recorded_wins(owner: Owner) -> None:
    """A second replica's owner on the same database: both computed version N from the same
    state and both write it; the row ClickHouse recorded first counts everywhere, and the
    later writer is told to retry (its change did not take effect)."""
    policy = load_policy(owner.settings.policy_file)
    await owner.client.get("/v1/admin/policy/state")  # version 1 recorded
    state = await audit.latest_state(owner.store)
    first = apply_change(policy, state, Change("kill", "a", "r", app=TEST_APP))
    late = apply_change(policy, state, Change("kill", "b", "r", app=OTHER_APP))
    won = await audit.record(owner.store, first)
    with pytest.raises(audit.ConcurrentChange, match="version 2 at the same time"):
        await audit.record(owner.store, late)
    assert await owner.store.scalar("SELECT count() FROM {db}.policy_audit WHERE version = 2") == 2
    assert await audit.latest_state(owner.store) == first.state
    history = await audit.history(owner.store, limit=10)
    assert [(r.version, r.change_id) for r in history[:1]] == [(2, won.change_id)]
    assert [r.version for r in history] == [2, 1]


async def test_a_restarted_owner_continues_the_versions(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with serve_owner(settings) as first:
        await first.change(action="kill", app=TEST_APP, reason="r")
        second = PolicyOwner(first.store, load_policy(settings.policy_file))
        await second.start()  # same file: nothing recorded
        assert (await second.state()).version == 2
        async with serve(create_api(settings, first.store, policy_owner=second)) as url:
            async with httpx.AsyncClient(base_url=url, headers=first.client.headers) as client:
                response = await client.post(
                    "/v1/admin/policy/changes",
                    json={"action": "unkill", "app": TEST_APP, "actor": "x"},
                )
                assert response.json()["version"] == 3
    assert LiveState().version == 0
