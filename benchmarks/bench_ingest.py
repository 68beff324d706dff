"""Ingest throughput against the real broker, next to two baselines run in the same script.

Three servers, each a separate uvicorn process on loopback (uvloop + httptools), all producing
to the real Kafka broker with acks=all and the idempotent producer:

- pinwatch: the real ingest app (`ingest.app.create_app`) served as `pinwatch ingest` serves it
            (`ingest.cli.server_options`: its report protocol, which answers report POSTs
            without ASGI, and the proxy options), coalescing records into messages, with the
            garbage-collector tuning `pinwatch ingest` applies (`ingest.cli.tune_gc`).
- naive:    FastAPI + a pydantic body model + `send_and_wait` per report (one message each),
            with uvicorn's defaults, as a FastAPI app usually is served.
- bare:     an ASGI app that only reads the body and answers 202, with pinwatch's proxy
            options: the ceiling of any ASGI app (pinwatch's report path is no longer one).

The load generator (this process) keeps N keep-alive connections busy with raw HTTP/1.1 requests
(an httpx client would be the bottleneck), for single-report POSTs and 50-report batches,
bounded by --seconds and --max-requests per scenario. It prints reports/s and the ratios.

    .venv/bin/python benchmarks/bench_ingest.py            # about 3 minutes
    .venv/bin/python benchmarks/bench_ingest.py --seconds 10 --connections 128
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KEY = "bench-ingest-key-0123456789abcdef"
APP = "com.example.bench"
HOST = "api.bench.test"
SERVERS = ("pinwatch", "naive", "bare")


# --- the servers (run in child processes) ------------------------------------------------------


def _policy_file(directory: Path) -> Path:
    pins = [base64.b64encode(os.urandom(32)).decode() for _ in range(2)]
    path = directory / "policy.yaml"
    path.write_text(
        f'apps:\n  - id: {APP}\n    ingest_keys: ["{KEY}"]\n'
        f"hosts:\n  - host: {HOST}\n    phase: enforce\n    pins:\n"
        f'      - {{sha256: "{pins[0]}", role: primary}}\n'
        f'      - {{sha256: "{pins[1]}", role: backup}}\n'
    )
    return path


# The naive baseline's body model (module level, so FastAPI resolves the annotations).
class Report(BaseModel):
    id: str
    type: str
    at: str | None = None
    host: str
    port: int = 443
    result: str | None = None
    enforced: bool | None = None
    observed_pins: list[str] = []
    count: int = 1


class Batch(BaseModel):
    app: dict[str, str]
    device: dict[str, str] = {}
    sent_at: str | None = None
    reports: list[Report]


def _naive_app(settings: Any) -> Any:
    from contextlib import asynccontextmanager

    from aiokafka import AIOKafkaProducer
    from fastapi import FastAPI

    holder: dict[str, AIOKafkaProducer] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        from pinwatch.topics import ensure_topics

        await ensure_topics(settings)
        holder["producer"] = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
        )
        await holder["producer"].start()
        yield
        await holder["producer"].stop()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/reports", status_code=202)
    async def post(batch: Batch) -> dict[str, int]:
        for report in batch.reports:
            await holder["producer"].send_and_wait(
                settings.kafka_topic, report.model_dump_json().encode()
            )
        return {"accepted": len(batch.reports)}

    return app


async def _bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 202,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"14")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"accepted":1}'})


def serve(kind: str, port: int, bootstrap: str, topic: str, policy: Path) -> None:
    import uvicorn

    from pinwatch.settings import Settings

    settings = Settings(
        kafka_bootstrap=bootstrap,
        kafka_topic=topic,
        kafka_dead_letter_topic=f"{topic}.dead-letter",
        policy_file=policy,
        ingest_rate_limit_per_second=0,
        log_level="WARNING",
    )
    from ingest.cli import proxy_options, server_options, tune_gc

    # pinwatch runs as `pinwatch ingest` configures uvicorn (its report protocol included), the
    # bare ceiling with the same proxy options, naive with uvicorn's defaults, as a FastAPI app
    # usually is
    options: dict[str, Any] = {"http": "httptools"}
    if kind == "pinwatch":
        from ingest.app import create_app

        app: Any = create_app(settings)
        options.update(server_options(settings, app))
        tune_gc()  # as `pinwatch ingest` does
    elif kind == "naive":
        app = _naive_app(settings)
    else:
        app = _bare_app
        options.update(proxy_options(settings))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        access_log=False,
        log_level="warning",
        lifespan="on",
        **options,
    )


# --- the load generator ------------------------------------------------------------------------


def _bodies(reports_per_request: int, variants: int = 64) -> list[bytes]:
    from tests.payloads import native_batch  # type: ignore[import-not-found]

    pins = [base64.b64encode(os.urandom(32)).decode() for _ in range(3)]
    out = []
    for _ in range(variants):
        reports = [
            {
                "id": str(uuid.uuid4()),
                "type": "pin_validation",
                "at": "2026-11-28T09:59:58Z",
                "host": HOST,
                "port": 443,
                "result": "ok",
                "enforced": True,
                "observed_pins": pins,
                "count": 1,
            }
            for _ in range(reports_per_request)
        ]
        body = orjson.dumps(native_batch(reports, app=APP))
        out.append(
            b"POST /v1/reports HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            + f"X-Pinwatch-Key: {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    return out


@dataclass
class Result:
    requests: int = 0
    failures: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0  # seconds of CPU the server process used during the run

    def reports_per_second(self, per_request: int) -> float:
        return self.requests * per_request / self.seconds if self.seconds else 0.0

    def cpu_per_request_us(self) -> float:
        return self.server_cpu / self.requests * 1e6 if self.requests else 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc): what a request costs the server,
    steadier than requests/s on a machine others share."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _connection(
    port: int, requests: list[bytes], stop_at: float, budget: list[int], result: Result
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while time.monotonic() < stop_at and budget[0] > 0:
            budget[0] -= 1
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status == 202:
                result.requests += 1
            else:
                result.failures += 1
    finally:
        writer.close()


async def load(
    port: int, per_request: int, connections: int, seconds: float, max_requests: int
) -> Result:
    requests = _bodies(per_request)
    result = Result()
    budget = [max_requests]
    started = time.monotonic()
    await asyncio.gather(
        *(
            _connection(port, requests, started + seconds, budget, result)
            for _ in range(connections)
        )
    )
    result.seconds = time.monotonic() - started
    return result


def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become ready")


# reports per request -> pinwatch/naive in each round: reports/s ("rate") and server CPU a
# request, naive's over pinwatch's ("cpu")
Ratios = dict[str, dict[int, list[float]]]


def run_benchmark(args: argparse.Namespace) -> tuple[dict[str, dict[int, Result]], Ratios]:
    """All servers run at once; the scenarios take turns across servers for --rounds rounds and
    each keeps its best run, so load from elsewhere on the machine skews no server in
    particular."""
    import uvloop

    from pinwatch.localkafka import free_port

    # The load generator shares the two cores with the server and the broker: on uvloop it
    # takes less of them from the server it measures.
    uvloop.install()

    results: dict[str, dict[int, Result]] = {kind: {} for kind in args.servers}
    ratios: Ratios = {"rate": {1: [], 50: []}, "cpu": {1: [], 50: []}}
    processes: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        policy = _policy_file(Path(tmp))
        try:
            for kind in args.servers:
                port = free_port()
                topic = f"bench-ingest-{kind}-{uuid.uuid4().hex[:8]}"
                command = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
                command += ["--topic", topic, "--bootstrap", args.bootstrap]
                command += ["--policy", str(policy)]
                processes[kind] = (port, subprocess.Popen(command, cwd=REPO))
            for port, process in processes.values():
                _wait_ready(port, process)
                for per_request in (1, 50):  # warm-up
                    asyncio.run(load(port, per_request, 8, 0.5, 500))
            for round_number in range(1, args.rounds + 1):
                for per_request, connections in (
                    (1, args.connections),
                    (50, args.batch_connections),
                ):
                    this_round: dict[str, Result] = {}
                    for kind, (port, process) in processes.items():
                        cpu_before = _cpu_seconds(process.pid)
                        result = asyncio.run(
                            load(port, per_request, connections, args.seconds, args.max_requests)
                        )
                        result.server_cpu = _cpu_seconds(process.pid) - cpu_before
                        this_round[kind] = result
                        best = results[kind].get(per_request)
                        if best is None or result.reports_per_second(
                            per_request
                        ) > best.reports_per_second(per_request):
                            results[kind][per_request] = result
                        print(
                            f"round {round_number} {kind:>9} {per_request:>3} report(s)/request: "
                            f"{result.reports_per_second(per_request):>10,.0f} reports/s "
                            f"({result.requests:,} requests in {result.seconds:.1f}s, "
                            f"{result.failures} not 202, "
                            f"server {result.cpu_per_request_us():.0f} us CPU a request)",
                            flush=True,
                        )
                    ours, naive = this_round.get("pinwatch"), this_round.get("naive")
                    if ours and naive and ours.requests and naive.requests:
                        rate = ours.reports_per_second(per_request) / naive.reports_per_second(
                            per_request
                        )
                        cpu = naive.cpu_per_request_us() / ours.cpu_per_request_us()
                        ratios["rate"][per_request].append(rate)
                        ratios["cpu"][per_request].append(cpu)
                        print(
                            f"round {round_number} pinwatch/naive in this round: {rate:.1f}x "
                            f"reports/s, {cpu:.1f}x less server CPU a request"
                        )
        finally:
            for _, process in processes.values():
                process.terminate()
            for _, process in processes.values():
                process.wait(timeout=30)
    return results, ratios


def report(results: dict[str, dict[int, Result]], ratios: Ratios) -> None:
    def rate(kind: str, n: int) -> float:
        return results[kind][n].reports_per_second(n) if kind in results else 0.0

    print()
    for n, label in ((1, "single-report POSTs"), (50, "50-report batches")):
        ours = rate("pinwatch", n)
        line = f"{label}: pinwatch {ours:,.0f} reports/s"
        if rate("naive", n):
            line += f" = {ours / rate('naive', n):.1f}x naive (best vs best)"
        if ratios["rate"][n]:
            # Each round runs the servers back to back, so a round's ratio compares them under
            # the same load from elsewhere; the median of those is the steadier estimate.
            line += f", {statistics.median(ratios['rate'][n]):.1f}x median of the rounds' ratios"
            line += (
                f" ({statistics.median(ratios['cpu'][n]):.1f}x less server CPU a request, median)"
            )
        if rate("bare", n):
            line += f", {ours / rate('bare', n):.0%} of the bare-ASGI ceiling"
        print(line)
    print("goals: single-report >= 3x naive; 50-report batches >= 50,000 reports/s per process")


def main(argv: list[str] | None = None) -> int:
    from pinwatch.settings import Settings

    parser = argparse.ArgumentParser(
        prog="bench_ingest.py",
        description="Measure ingest reports/s (single reports, 50-report batches) against the "
        "real Kafka broker, next to a naive FastAPI+send_and_wait endpoint and a bare ASGI app.",
    )
    parser.add_argument("--bootstrap", default=Settings().kafka_bootstrap, help="Kafka bootstrap")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured run")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds; each scenario keeps its best"
    )
    parser.add_argument(
        "--max-requests", type=int, default=200_000, help="most requests per measured run"
    )
    parser.add_argument("--connections", type=int, default=64, help="connections, single reports")
    parser.add_argument("--batch-connections", type=int, default=16, help="connections, batches")
    parser.add_argument(
        "--servers", nargs="+", choices=SERVERS, default=list(SERVERS), help="which servers to run"
    )
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--policy", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.bootstrap, args.topic, args.policy)
        return 0
    print(
        f"bench_ingest: real Kafka at {args.bootstrap}, {args.rounds} rounds of {args.seconds:g}s, "
        f"{args.connections}/{args.batch_connections} connections",
        flush=True,
    )
    report(*run_benchmark(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
