"""`python -m pinwatch.healthcheck`, the image's HEALTHCHECK: healthy when a pinwatch process
answers /healthz with 200 on one of the ports it asks, unhealthy (exit 1, saying why) when none
answers or one answers an error. Real HTTP servers on loopback stand in for ingest and the
consumer; the last case runs the module as the image does."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devstack.localkafka import free_port
from pinwatch import healthcheck


def serve(status: int) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            code = status if self.path == "/healthz" else 404
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture
def servers() -> Iterator[dict[int, int]]:
    """status -> port of a server answering /healthz with it."""
    started = {code: serve(code) for code in (200, 503)}
    yield {code: port for code, (_, port) in started.items()}
    for server, _ in started.values():
        server.shutdown()
        server.server_close()


def test_healthy_when_one_part_answers(servers: dict[int, int]) -> None:
    closed = free_port()
    urls = [f"http://127.0.0.1:{closed}/healthz", f"http://127.0.0.1:{servers[200]}/healthz"]
    assert healthcheck.main([arg for url in urls for arg in ("--url", url)]) == 0


def test_unhealthy_says_why(servers: dict[int, int], capsys: pytest.CaptureFixture[str]) -> None:
    closed = free_port()
    argv = ["--url", f"http://127.0.0.1:{closed}/healthz"]
    argv += ["--url", f"http://127.0.0.1:{servers[503]}/healthz"]
    assert healthcheck.main(argv) == 1
    err = capsys.readouterr().err
    assert f"{servers[503]}/healthz: 503" in err and "refused" in err.lower()


def run_module(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pinwatch.healthcheck"],
        env={**env, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_default_ports_come_from_the_settings(servers: dict[int, int]) -> None:
    # As in the image: no arguments, the consumer's port set by its environment.
    env = {"PINWATCH_INGEST_PORT": str(free_port()), "PINWATCH_CONSUMER_PORT": str(servers[200])}
    result = run_module(env)
    assert result.returncode == 0, result.stderr
    result = run_module({**env, "PINWATCH_CONSUMER_PORT": str(servers[503])})
    assert result.returncode == 1 and "503" in result.stderr
