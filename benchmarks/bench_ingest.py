"""Ingest throughput against the real broker, next to two baselines run in the same script.

Three servers, each a separate uvicorn process on loopback (uvloop + httptools), all producing
to the real Kafka broker with acks=all and the idempotent producer, in the production
configuration: behind a load balancer. The load generator stands for it: it is the proxy named
in PINWATCH_INGEST_FORWARDED_ALLOW_IPS, and every request carries `X-Forwarded-For` with one of
64 client addresses (`--direct`: no proxy named, no header, clients connecting themselves).

- pinwatch: the real ingest app (`ingest.app.create_app`) served as `pinwatch ingest` serves it
            (`ingest.cli.server_options`: its report protocol, which answers report POSTs
            without ASGI and reads X-Forwarded-For itself, and the proxy options), coalescing
            records into messages, with the garbage-collector tuning `pinwatch ingest` applies
            (`pinwatch.gctune.for_requests`).
- naive:    FastAPI + a pydantic body model + `send_and_wait` per report (one message each),
            with uvicorn's defaults, as a FastAPI app usually is served (those believe
            X-Forwarded-For from 127.0.0.1, i.e. from the load generator, too).
- bare:     an ASGI app that only reads the body and answers 202, with pinwatch's proxy
            options: the ceiling of any ASGI app (pinwatch's report path is no longer one).

The load generator (this process) keeps N keep-alive connections busy with raw HTTP/1.1 requests
(an httpx client would be the bottleneck), for single-report POSTs and 50-report batches,
bounded by --seconds and --max-requests per run. Two phases:

1. A sweep: every server briefly at each connection count (--connections, --batch-connections),
   to find the count at which each does best. They differ: pinwatch answers a request only once
   Kafka acknowledged the message it joined, so at low counts it waits on the broker with part
   of its core idle, while the naive endpoint does best at 16 to 64 connections and slows
   beyond (each of its requests is a message of its own). The sweep prints every count, so the
   ratio at any one count stays visible.
2. Paired rounds: the servers back to back, each at its best count, in an order that
   alternates from round to round. A round's pinwatch/naive ratio compares them under the same
   load from elsewhere on the machine; the median of the rounds' ratios is the result, with the
   lowest and highest round beside it, and the server CPU a request (from /proc) for each.

    .venv/bin/python benchmarks/bench_ingest.py            # about 3.5 minutes
    .venv/bin/python benchmarks/bench_ingest.py --connections 64 --rounds 9
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
        from pinwatch.kafka import client_args
        from pinwatch.topics import ensure_topics

        await ensure_topics(settings)
        holder["producer"] = AIOKafkaProducer(
            **client_args(settings), acks="all", enable_idempotence=True
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


# The load balancer in front of ingest: the load generator connects from here.
PROXY = "127.0.0.1"


def serve(
    kind: str,
    port: int,
    bootstrap: str,
    topic: str,
    policy: Path,
    direct: bool,
    client_limits: bool = True,
) -> None:
    import uvicorn

    from pinwatch.settings import Settings

    settings = Settings(
        kafka_bootstrap=bootstrap,
        kafka_topic=topic,
        kafka_dead_letter_topic=f"{topic}.dead-letter",
        policy_file=policy,
        ingest_rate_limit_per_second=0,
        # The device and network limits stay on, so their cost is in the figures, far above
        # what the load generator sends (64 devices on 64 networks); --no-client-limits turns
        # them off, to measure what they cost.
        ingest_device_rate_limit_per_second=1e9 if client_limits else 0,
        ingest_network_rate_limit_per_second=1e9 if client_limits else 0,
        ingest_forwarded_allow_ips="" if direct else PROXY,
        log_level="WARNING",
    )
    from ingest.cli import proxy_options, server_options
    from pinwatch import gctune

    # pinwatch runs as `pinwatch ingest` configures uvicorn (its report protocol included), the
    # bare ceiling with the same proxy options, naive with uvicorn's defaults, as a FastAPI app
    # usually is
    options: dict[str, Any] = {"http": "httptools"}
    if kind == "pinwatch":
        from ingest.app import create_app

        app: Any = create_app(settings)
        options.update(server_options(settings, app))
        gctune.for_requests()  # as `pinwatch ingest` does
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


def _bodies(reports_per_request: int, direct: bool, variants: int = 64) -> list[bytes]:
    from devstack.clients import native_batch  # type: ignore[import-not-found]

    pins = [base64.b64encode(os.urandom(32)).decode() for _ in range(3)]
    out = []
    for variant in range(variants):
        # the proxy says which client it forwards for: one of `variants` networks
        forwarded = "" if direct else f"X-Forwarded-For: 203.0.{variant}.{variant * 3 + 1}\r\n"
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
            + f"X-Pinwatch-Key: {KEY}\r\n{forwarded}Content-Length: {len(body)}\r\n\r\n".encode()
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
    try:
        while time.monotonic() < stop_at and budget[0] > 0:
            budget[0] -= 1
            # The shared budget numbers the requests: connections send different ones.
            writer.write(requests[budget[0] % len(requests)])
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
    port: int, per_request: int, connections: int, seconds: float, max_requests: int, direct: bool
) -> Result:
    requests = _bodies(per_request, direct)
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


# (server, reports per request) -> connections at which that server did best in the sweep
Best = dict[tuple[str, int], int]
# reports per request -> each paired round's results by server
Rounds = dict[int, list[dict[str, Result]]]

SCENARIOS = ((1, "single-report POSTs"), (50, "50-report batches"))


def _measure(
    process: tuple[int, subprocess.Popen[bytes]],
    per_request: int,
    connections: int,
    seconds: float,
    max_requests: int,
    direct: bool,
) -> Result:
    port, server = process
    cpu_before = _cpu_seconds(server.pid)
    result = asyncio.run(load(port, per_request, connections, seconds, max_requests, direct))
    result.server_cpu = _cpu_seconds(server.pid) - cpu_before
    return result


def _levels(args: argparse.Namespace, per_request: int) -> list[int]:
    return args.connections if per_request == 1 else args.batch_connections


def sweep(
    processes: dict[str, tuple[int, subprocess.Popen[bytes]]], args: argparse.Namespace
) -> Best:
    """Each server at each connection count, briefly: where each one does best. A server that
    waits on Kafka for every request needs more connections to keep its core busy than one
    that does not, and comparing both at one count would measure that count, not the servers."""
    best: Best = {}
    for per_request, label in SCENARIOS:
        levels = _levels(args, per_request)
        results: dict[str, list[Result]] = {kind: [] for kind in processes}
        for connections in levels:
            for kind, process in processes.items():
                results[kind].append(
                    _measure(
                        process,
                        per_request,
                        connections,
                        args.sweep_seconds,
                        args.max_requests,
                        args.direct,
                    )
                )
        print(f"\nsweep, {label}, reports/s by connections ({args.sweep_seconds:g}s each):")
        print(f"{'':>16}" + "".join(f"{c:>12}" for c in levels))
        for kind, row in results.items():
            rates = [r.reports_per_second(per_request) for r in row]
            print(f"{kind:>16}" + "".join(f"{r:>12,.0f}" for r in rates))
            best[kind, per_request] = levels[rates.index(max(rates))]
        if "pinwatch" in results and "naive" in results:
            pairs = zip(results["pinwatch"], results["naive"], strict=True)
            ratios = [_ratios({"pinwatch": a, "naive": b}, per_request) for a, b in pairs]
            print(
                f"{'pinwatch/naive':>16}"
                + "".join(f"{r[0]:>11.1f}x" if r else f"{'-':>12}" for r in ratios)
            )
        print(
            "best: " + ", ".join(f"{k} at {best[k, per_request]} connections" for k in results),
            flush=True,
        )
    return best


def paired_rounds(
    processes: dict[str, tuple[int, subprocess.Popen[bytes]]], best: Best, args: argparse.Namespace
) -> Rounds:
    """Rounds of every server back to back, each at its best connection count, in an order
    that alternates from round to round: a round's ratio compares the servers under the same
    load from elsewhere on this shared machine."""
    rounds: Rounds = {n: [] for n, _ in SCENARIOS}
    for number in range(1, args.rounds + 1):
        for per_request, _ in SCENARIOS:
            order = list(processes.items())
            if number % 2 == 0:
                order.reverse()
            this_round: dict[str, Result] = {}
            for kind, process in order:
                connections = best[kind, per_request]
                result = _measure(
                    process, per_request, connections, args.seconds, args.max_requests, args.direct
                )
                this_round[kind] = result
                print(
                    f"round {number} {kind:>9} {per_request:>3} report(s)/request, "
                    f"{connections:>3} connections: "
                    f"{result.reports_per_second(per_request):>10,.0f} reports/s "
                    f"({result.requests:,} requests in {result.seconds:.1f}s, "
                    f"{result.failures} not 202, "
                    f"server {result.cpu_per_request_us():.0f} us CPU a request)",
                    flush=True,
                )
            rounds[per_request].append(this_round)
            ratio = _ratios(this_round, per_request)
            if ratio is not None:
                print(
                    f"round {number} pinwatch/naive in this round: {ratio[0]:.1f}x reports/s, "
                    f"{ratio[1]:.1f}x less server CPU a request"
                )
    return rounds


def _ratios(this_round: dict[str, Result], per_request: int) -> tuple[float, float] | None:
    """(pinwatch/naive reports/s, naive/pinwatch server CPU a request) of one round."""
    ours, naive = this_round.get("pinwatch"), this_round.get("naive")
    if not (ours and naive and ours.requests and naive.requests):
        return None
    rate = ours.reports_per_second(per_request) / naive.reports_per_second(per_request)
    return rate, naive.cpu_per_request_us() / ours.cpu_per_request_us()


def run_benchmark(args: argparse.Namespace) -> tuple[Best, Rounds]:
    """Start the servers, warm them, sweep connection counts, then the paired rounds."""
    import uvloop

    from devstack.localkafka import free_port

    # The load generator shares the two cores with the server and the broker: on uvloop it
    # takes less of them from the server it measures.
    uvloop.install()

    processes: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        policy = _policy_file(Path(tmp))
        try:
            for kind in args.servers:
                port = free_port()
                topic = f"bench-ingest-{kind}-{uuid.uuid4().hex[:8]}"
                command = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
                command += ["--topic", topic, "--bootstrap", args.bootstrap]
                command += ["--policy", str(policy)] + (["--direct"] if args.direct else [])
                command += ["--no-client-limits"] if args.no_client_limits else []
                processes[kind] = (port, subprocess.Popen(command, cwd=REPO))
            for port, process in processes.values():
                _wait_ready(port, process)
                for per_request in (1, 50):  # warm-up
                    asyncio.run(load(port, per_request, 8, 0.5, 500, args.direct))
            best = sweep(processes, args)
            print()
            return best, paired_rounds(processes, best, args)
        finally:
            for _, process in processes.values():
                process.terminate()
            for _, process in processes.values():
                process.wait(timeout=30)


def report(best: Best, rounds: Rounds) -> None:
    print()
    verdicts = []
    for per_request, label in SCENARIOS:
        runs = rounds[per_request]
        if not runs:
            continue
        kinds = list(runs[0])
        ours = _rates(runs, "pinwatch", per_request)
        line = f"{label}, each server at its best connection count (" + ", ".join(
            f"{k} {best[k, per_request]}" for k in kinds
        )
        line += (
            f"), median of {len(runs)} rounds: pinwatch {statistics.median(ours):,.0f} reports/s"
        )
        ratios = [r for r in (_ratios(run, per_request) for run in runs) if r is not None]
        if ratios:
            rate = [r[0] for r in ratios]
            line += (
                f" = {statistics.median(rate):.1f}x naive (median of the rounds' paired ratios, "
                f"rounds {min(rate):.1f}x - {max(rate):.1f}x; "
                f"{statistics.median(r[1] for r in ratios):.1f}x less server CPU a request)"
            )
            if per_request == 1:
                verdicts.append(_verdict("single reports >= 3x naive", rate, 3.0, "{:.1f}x"))
        if "bare" in kinds:
            ceiling = statistics.median(_rates(runs, "bare", per_request))
            line += f", {statistics.median(ours) / ceiling:.0%} of the bare-ASGI ceiling"
        if per_request == 50:
            verdicts.append(
                _verdict("50-report batches >= 50,000 reports/s", ours, 50_000, "{:,.0f}/s")
            )
        print(line)
    for verdict in verdicts:
        print(verdict)


def _rates(runs: list[dict[str, Result]], kind: str, per_request: int) -> list[float]:
    """One server's reports/s in each round."""
    return [run[kind].reports_per_second(per_request) for run in runs if kind in run]


def _verdict(goal: str, values: list[float], floor: float, unit: str) -> str:
    median, lowest = statistics.median(values), min(values)
    if lowest >= floor:
        state = "met in every round"
    elif median >= floor:
        state = "met by the median, not in every round"
    else:
        state = "NOT met"
    return (
        f"goal {goal}: {state} (median {unit.format(median)}, lowest round {unit.format(lowest)})"
    )


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 16,64,256") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: connection counts are at least 1")
    return counts


def main(argv: list[str] | None = None) -> int:
    from devstack.localkafka import scratch_broker

    parser = argparse.ArgumentParser(
        prog="bench_ingest.py",
        description="Measure ingest reports/s (single reports, 50-report batches) against the "
        "real Kafka broker, next to a naive FastAPI+send_and_wait endpoint and a bare ASGI app.",
    )
    parser.add_argument(
        "--bootstrap",
        default="",
        help="Kafka bootstrap (default: a local broker started for the run, stopped after it)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each paired run")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds")
    parser.add_argument("--sweep-seconds", type=float, default=2.0, help="length of each sweep run")
    parser.add_argument(
        "--max-requests", type=int, default=200_000, help="most requests per measured run"
    )
    parser.add_argument(
        "--connections",
        type=_counts,
        default=[16, 64, 256],
        help="connection counts to sweep for single reports (comma-separated)",
    )
    parser.add_argument(
        "--batch-connections",
        type=_counts,
        default=[4, 16, 64, 256],
        help="connection counts to sweep for batches (comma-separated)",
    )
    parser.add_argument(
        "--servers", nargs="+", choices=SERVERS, default=list(SERVERS), help="which servers to run"
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="clients connect themselves: no proxy named, no X-Forwarded-For (default: behind "
        "a load balancer, as production runs)",
    )
    parser.add_argument(
        "--no-client-limits",
        action="store_true",
        help="serve pinwatch with its per-device and per-network rate limits off (on by default, "
        "far above the load): run once with and once without to see what they cost",
    )
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--policy", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(
            args.serve,
            args.port,
            args.bootstrap,
            args.topic,
            args.policy,
            args.direct,
            client_limits=not args.no_client_limits,
        )
        return 0
    with tempfile.TemporaryDirectory(prefix="pinwatch-bench-ingest-") as work:
        say = None if args.bootstrap else lambda line: print(f"no --bootstrap: {line}", flush=True)
        with scratch_broker(Path(work) / "broker", bootstrap=args.bootstrap, say=say) as bootstrap:
            args.bootstrap = bootstrap
            _announce(args)
            report(*run_benchmark(args))
    return 0


def _announce(args: argparse.Namespace) -> None:
    print(
        f"bench_ingest: real Kafka at {args.bootstrap}; "
        + (
            "clients connecting directly"
            if args.direct
            else f"behind a proxy ({PROXY}) sending X-Forwarded-For"
        )
        + "; connections swept "
        f"{','.join(map(str, args.connections))} (single) and "
        f"{','.join(map(str, args.batch_connections))} (batches), then {args.rounds} paired "
        f"rounds of {args.seconds:g}s",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
