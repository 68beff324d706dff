"""The fuzz stage (issue #17): schemathesis over the OpenAPI that a real `pinwatch ingest`
publishes, against that process and the session's real Kafka broker, with a fixed seed and a
bounded number of examples per operation and generation mode (valid and invalid data).

Asserted for every request: an answer within REQUEST_SECONDS (no hang), never a 5xx, every
status documented for its operation, every body as documented (each non-2xx one the error shape
`{"error","field","detail"}` as JSON), and the headers the documentation promises (Retry-After).
Requests carry the app's ingest key, so the bodies reach the format parsers; hypothesis draws
the rest (keys in the query, Content-Encoding, bodies of every shape).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devstack.localkafka import free_port
from pinwatch.settings import Settings
from tests.support.names import TEST_KEY
from tests.support.policy import signing_key, write_state_cache

SEED = 17_2026
EXAMPLES = 150  # per operation and generation mode: about 1,200 requests, ~30 s on this machine
REQUEST_SECONDS = 10.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def ingest_process(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[str]:
    """`pinwatch ingest` on a free port, on this test's topics; its base URL once ready."""
    settings = make_settings()
    port = free_port()
    log = tmp_path / "ingest.log"
    env = {
        **os.environ,
        "PINWATCH_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PINWATCH_KAFKA_TOPIC": settings.kafka_topic,
        "PINWATCH_KAFKA_DEAD_LETTER_TOPIC": settings.kafka_dead_letter_topic,
        "PINWATCH_INGEST_PORT": str(port),
        "PINWATCH_INGEST_RATE_LIMIT_PER_SECOND": "0",  # the fuzzer, not the limiter, is tested
        "PINWATCH_LOG_LEVEL": "WARNING",
        # The policy routes serve a signed document from the copy of a live state an edge
        # keeps (no owner runs here).
        "PINWATCH_POLICY_SIGNING_KEY_FILE": str(signing_key(tmp_path)),
        "PINWATCH_POLICY_STATE_CACHE_FILE": str(write_state_cache(settings, tmp_path / "s.json")),
    }
    command = [
        sys.executable,
        "-m",
        "pinwatch.cli",
        "ingest",
        "--policy",
        str(settings.policy_file),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"pinwatch ingest exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"pinwatch ingest not ready: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_fuzz_the_published_openapi(ingest_process: str) -> None:
    schema = schemathesis.openapi.from_url(f"{ingest_process}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {(op.method.upper(), op.path) for op in operations}
    assert {("POST", "/v1/reports"), ("POST", "/v1/reports/nel")} <= paths
    sent: dict[tuple[str, str], dict[int, int]] = {}

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            statuses = sent.setdefault((operation.label, mode.value), {})
            try:
                _fuzz(operation, mode, statuses)
            except Unsatisfiable:
                # no parameter and no body: nothing invalid to send (GET /healthz and the like)
                assert mode is GenerationMode.NEGATIVE and not statuses, operation.label

    total = sum(n for statuses in sent.values() for n in statuses.values())
    print(f"\nfuzz stage: {total} requests, by operation and mode: {sent}")
    # the report routes were reached past authentication, and refused and accepted things
    report_statuses = {
        status for (label, _), by in sent.items() if "/v1/reports" in label for status in by
    }
    assert {202, 400} <= report_statuses, sent


def _fuzz(operation: Any, mode: GenerationMode, statuses: dict[int, int]) -> None:
    """EXAMPLES requests to one operation in one generation mode, each checked; `statuses`
    counts the answers."""

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        response = case.call(headers={"X-Pinwatch-Key": TEST_KEY}, timeout=REQUEST_SECONDS)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            assert response.headers["content-type"] == ["application/json"]  # one, exactly
            body = orjson.loads(response.content)
            assert set(body) == {"error", "field", "detail"}, body

    fuzz()
