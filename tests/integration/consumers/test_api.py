"""The consumer's HTTP API answers every bad parameter with a 400 naming it and the bound it
broke, and every answer that is not a success (400, 401, 403, 404, 405, 503, the query API
and /readyz alike) in the one error shape: exactly `{"error", "field", "detail"}`, JSON.

The API runs in real uvicorn on the test's chDB database, with a consumer that was never
started (so /readyz is honestly not ready); the rollout queries run for real.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumers.api import create_api
from consumers.consumer import Consumer
from devstack.certs import CertificateAuthority
from pinwatch.settings import Settings
from tests.support.errors import assert_error
from tests.support.names import TEST_HOST
from tests.support.pipeline import migrated_store
from tests.support.serve import serve

ROLLOUT = f"/v1/rollout/{TEST_HOST}"


class Api:
    """The served API and a client (a plain class: Hypothesis prints a failing example's
    fixtures, and Settings hold the admin token)."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings, store: Any) -> None:
        self.client, self.settings, self.store = client, settings, store
        self.auth = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}

    async def rollout(self, path: str = ROLLOUT, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.auth)


@pytest.fixture(scope="module")
async def api(make_module_settings: Callable[..., Settings]) -> AsyncIterator[Api]:
    settings = make_module_settings(retention_days=30)
    async with migrated_store(settings) as store:
        consumer = Consumer(settings, store)  # never started
        async with (
            serve(create_api(settings, store, consumer=consumer)) as url,
            httpx.AsyncClient(base_url=url, timeout=60) as client,
        ):
            yield Api(client, settings, store)


def _pins(ca: CertificateAuthority, n: int) -> list[str]:
    return [ca.pin("primary")] * n


BAD_PARAMETERS = [
    # (query parameters, field, what the detail must say). The three `since` first.
    ({"since": "1000000d"}, "since", "at most 30d (30 days, retention_days"),
    ({"since": "9" * 5000 + "d"}, "since", "at most 30d (30 days, retention_days"),
    ({"since": "0001-01-01T00:00:00Z"}, "since", "before 1900-01-01"),
    ({"since": "31d"}, "since", "at most 30d"),
    ({"since": "5w"}, "since", "at most 4w"),
    ({"since": "0h"}, "since", "must be positive"),
    ({"since": "2999-01-01T00:00:00Z"}, "since", "not in the past"),
    ({"since": "9999-12-31T23:00:00-05:00"}, "since", "neither a duration"),
    ({"since": "0001-01-01T00:00:00+05:00"}, "since", "neither a duration"),
    ({"since": "yesterday"}, "since", "neither a duration (30m, 24h, 7d)"),
    ({"app": "a" * 257}, "app", "at most 256 characters"),
    ({"app_version": "5" * 257}, "app_version", "at most 256 characters"),
    ({"platform": "p" * 65}, "platform", "at most 64 characters"),
    ({"platform": "blackberry"}, "platform", "none of android, ios, macos"),
    ({"pin": "abc"}, "pin", "not a base64 SHA-256 SPKI pin"),
    ({"pin": "owner:" + "A" * 43 + "="}, "pin", "must be primary or backup"),
    ({"pin_set": "later"}, "pin_set", "is not a pin set of"),
]


@pytest.mark.parametrize(("params", "field", "says"), BAD_PARAMETERS)
async def test_every_bad_parameter_is_a_400_naming_it_and_its_bound(
    api: Api, params: dict[str, str], field: str, says: str
) -> None:
    detail = assert_error(await api.rollout(**params), 400, "bad_request", field)
    assert detail.startswith(f"{field}: ") and says in detail, detail


async def test_too_many_pins_and_both_pin_kinds_are_400s(
    api: Api, ca: CertificateAuthority
) -> None:
    limit = api.settings.max_pins_per_report
    detail = assert_error(await api.rollout(pin=_pins(ca, limit + 1)), 400, "bad_request", "pin")
    assert f"at most {limit} candidate pins" in detail
    both = await api.rollout(pin=_pins(ca, 1), pin_set="current")
    assert "either pin= or pin_set=" in assert_error(both, 400, "bad_request", None)


@pytest.mark.parametrize(
    "host", ["a" * 254, "api%00.pinwatch.test", "api%20pinwatch.test", "%E2%80%8Bx%7F"]
)
async def test_a_host_that_is_not_a_host_name_is_a_400(
    api: Api, ca: CertificateAuthority, host: str
) -> None:
    response = await api.rollout(f"/v1/rollout/{host}", pin=_pins(ca, 1))
    assert "must be a host name" in assert_error(response, 400, "bad_request", "host")


async def test_good_questions_are_answered(api: Api, ca: CertificateAuthority) -> None:
    """The bounds are not too tight: the longest window, the oldest date, every filter."""
    for params in (
        {"since": "30d"},
        {"since": "4w"},
        {"since": "720h"},
        {"since": "1900-01-01T00:00:00Z"},
        {"since": "1h", "app": "a" * 256, "app_version": "5.2.0", "platform": "ios"},
        {"pin": _pins(ca, api.settings.max_pins_per_report)},
    ):
        response = await api.rollout(**params)
        assert response.status_code == 200, (params, response.text)
        assert response.json()["host"] == TEST_HOST


async def test_every_answer_that_is_not_a_success_has_the_one_shape(api: Api) -> None:
    client = api.client
    assert_error(await client.get("/nope"), 404, "not_found", None)
    assert_error(await client.get("/v1/rollout"), 404, "not_found", None)
    unknown = await api.rollout("/v1/rollout/elsewhere.example")
    assert "not in the pin policy" in assert_error(unknown, 404, "not_found", "host")
    for method, path in (("POST", ROLLOUT), ("DELETE", "/readyz"), ("PUT", "/metrics")):
        answer = await client.request(method, path, headers=api.auth)
        detail = assert_error(answer, 405, "method_not_allowed", None)
        assert method in detail and answer.headers["allow"] == "GET"
    missing = await client.get(ROLLOUT)
    assert assert_error(missing, 401, "unauthorized", "Authorization")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await client.get(ROLLOUT, headers={"Authorization": "Bearer not-the-token"})
    assert_error(wrong, 403, "forbidden", "Authorization")
    not_ready = await client.get("/readyz")
    assert "consumer not running" in assert_error(not_ready, 503, "not_ready", None)
    # ClickHouse failing under the query API: a table the rollout reads is gone.
    await api.store.command("DETACH TABLE {db}.rollout_hourly")
    try:
        failed = await api.rollout(since="1h")
        assert "ClickHouse query failed" in assert_error(failed, 503, "unavailable", None)
    finally:
        await api.store.command("ATTACH TABLE {db}.rollout_hourly")
    assert (await api.rollout(since="1h")).status_code == 200


texts = st.text(max_size=300) | st.sampled_from(["", " ", "0", "-1d", "1e9d", "30d", "ios"])


@hsettings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    params=st.dictionaries(
        st.sampled_from(["since", "app", "app_version", "platform", "pin", "pin_set", "other"]),
        texts,
        max_size=4,
    ),
    host=st.one_of(st.just(TEST_HOST), st.text(min_size=1, max_size=80)),
)
async def test_no_query_is_answered_with_a_5xx(api: Api, params: dict[str, str], host: str) -> None:
    """Anything in any parameter: answered, with a 200 or a 4xx in the error shape."""
    path = "/v1/rollout/" + urllib.parse.quote(host, safe="")
    response = await api.rollout(path, **params)
    assert response.status_code in (200, 400, 404), response.text
    if response.status_code != 200:
        body = response.json()
        assert set(body) == {"error", "field", "detail"}, body
