"""`pinwatch ingest` as an operator runs it: a bad policy starts nothing; a good one serves until
SIGTERM, then flushes and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from devstack.clients import native_batch, network_error
from devstack.localkafka import free_port, port_open
from pinwatch.settings import Settings
from tests.support.ingest import read_records
from tests.support.names import TEST_APP, TEST_HOST, TEST_KEY
from tests.support.serve import wait_ready

PINWATCH = [sys.executable, "-m", "pinwatch.cli"]


def test_bad_policy_exits_nonzero_naming_the_line(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text(
        "apps:\n  - id: com.example.app\n    ingest_keys: [short]\n"
        "hosts:\n  - host: api.example.com\n    pins:\n"
        '      - {sha256: "not-a-pin", role: primary}\n'
    )
    port = free_port()
    proc = subprocess.run(
        [*PINWATCH, "ingest", "--policy", str(policy), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PINWATCH_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
    )
    assert proc.returncode == 2
    assert f"{policy}:3:" in proc.stderr  # the ingest key that is too short
    assert f"{policy}:7:" in proc.stderr  # the pin that is not a pin
    assert not port_open("127.0.0.1", port)


async def _start_ingest(settings: Settings, **env: str) -> tuple[asyncio.subprocess.Process, str]:
    """`pinwatch ingest` on a free port against the test broker and topics, once it is ready;
    (process, base URL). Its stdout and stderr are pipes for the caller to read."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *PINWATCH,
        "ingest",
        "--policy",
        str(settings.policy_file),
        env={
            **os.environ,
            "PINWATCH_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "PINWATCH_KAFKA_TOPIC": settings.kafka_topic,
            "PINWATCH_KAFKA_DEAD_LETTER_TOPIC": settings.kafka_dead_letter_topic,
            "PINWATCH_INGEST_PORT": str(port),
            **env,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, running=lambda: proc.returncode is None, what="pinwatch ingest")
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, url


async def test_serves_until_sigterm_then_exits_cleanly(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    proc, url = await _start_ingest(settings)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            body = native_batch([network_error(TEST_HOST)], app=TEST_APP)
            response = await client.post(
                "/v1/reports",
                content=orjson.dumps(body),
                headers={"X-Pinwatch-Key": TEST_KEY, "Content-Type": "application/json"},
            )
            assert response.status_code == 202
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        # uvicorn re-raises the signal after its graceful shutdown, so process managers see it
        assert proc.returncode in (0, -signal.SIGTERM), stderr
        assert b'"event":"ingest_stopped"' in stderr
        assert b'"event":"producer_stopped"' in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    got = await read_records(settings, min_records=1)
    assert [r.id for r in got] == [body["reports"][0]["id"]]


async def test_forwarded_for_is_believed_from_named_proxies_only(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    proc, url = await _start_ingest(settings, PINWATCH_INGEST_FORWARDED_ALLOW_IPS="127.0.0.1")
    sent: dict[str, str] = {}
    try:
        for source in ("127.0.0.1", "127.0.0.3"):  # the named proxy; any other peer
            transport = httpx.AsyncHTTPTransport(local_address=source)
            async with httpx.AsyncClient(base_url=url, transport=transport) as client:
                body = native_batch([network_error(TEST_HOST)], app=TEST_APP)
                response = await client.post(
                    "/v1/reports",
                    content=orjson.dumps(body),
                    headers={
                        "X-Pinwatch-Key": TEST_KEY,
                        "Content-Type": "application/json",
                        "X-Forwarded-For": "198.51.100.7",
                    },
                )
                assert response.status_code == 202, response.text
                sent[body["reports"][0]["id"]] = source
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 30)
    got = {r.id: r.client_network for r in await read_records(settings, min_records=2)}
    by_source = {source: got[report_id] for report_id, source in sent.items()}
    assert by_source == {"127.0.0.1": "198.51.100.0/24", "127.0.0.3": "127.0.0.0/24"}
