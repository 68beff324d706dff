"""Memory and CPU of `pinwatch ingest` and `pinwatch consume` under the benchmarks' load: the
figures deploy/k8s's requests and limits come from (docs/deploy.md "Sizing").

The real commands run as child processes, as the image runs them: `pinwatch ingest` on a free
port and `pinwatch consume` (chDB, in its own process: the embedded engine's memory is part of
its RSS, so against a ClickHouse server, as on Kubernetes, the consumer needs less: the figure
is an upper bound), both on a Kafka broker (a local one started here, or --bootstrap). Phases:

1. idle: both ready, no traffic, for --idle-seconds.
2. load: bench_ingest.py's load generator (raw HTTP/1.1 on keep-alive connections), first
   50-report batches, then single-report POSTs, each for --seconds. Every report has its own
   id, so the consumer really inserts each one (repeated ids would be dropped as retries, and
   cost it nothing).
3. drain: until the consumer has inserted every report ingest accepted (bounded).

Every 0.25 s it reads /proc/<pid>/status (VmRSS, VmHWM) and /proc/<pid>/stat (CPU time) of
both. Printed per process: idle RSS (the baseline, same run), mean RSS under load, peak RSS
(VmHWM, the kernel's own high-water mark) and its ratio to idle, CPU cores used (CPU seconds
over wall seconds) over the load phase (the consumer's: until it has inserted everything) and
its busiest 5 s window.

    .venv/bin/python benchmarks/bench_footprint.py                # about 3 minutes
    .venv/bin/python benchmarks/bench_footprint.py --seconds 60 --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_ingest  # noqa: E402

SAMPLE_SECONDS = 0.25
WINDOW_SECONDS = 5.0


@dataclass
class Sample:
    at: float
    rss_mib: float
    hwm_mib: float
    cpu_seconds: float


@dataclass
class Track:
    name: str
    pid: int
    samples: list[Sample] = field(default_factory=list)

    def read(self) -> None:
        status = Path(f"/proc/{self.pid}/status").read_text()
        fields = {k: v for k, _, v in (line.partition(":") for line in status.splitlines())}
        rss = int(fields["VmRSS"].split()[0]) / 1024
        hwm = int(fields["VmHWM"].split()[0]) / 1024
        self.samples.append(Sample(time.monotonic(), rss, hwm, bench_ingest._cpu_seconds(self.pid)))

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


class Sampler(threading.Thread):
    def __init__(self, tracks: list[Track]) -> None:
        super().__init__(daemon=True)
        self.tracks = tracks
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(SAMPLE_SECONDS):
            for track in self.tracks:
                try:
                    track.read()
                except (FileNotFoundError, ProcessLookupError):
                    pass


def cores(samples: list[Sample]) -> float:
    if len(samples) < 2:
        return 0.0
    return (samples[-1].cpu_seconds - samples[0].cpu_seconds) / (samples[-1].at - samples[0].at)


def busiest_window(samples: list[Sample]) -> float:
    """Most CPU cores used over any WINDOW_SECONDS of the samples."""
    best, j = 0.0, 0
    for i, sample in enumerate(samples):
        while samples[j].at < sample.at - WINDOW_SECONDS:
            j += 1
        if sample.at - samples[j].at >= WINDOW_SECONDS * 0.8:
            best = max(best, cores(samples[j : i + 1]))
    return best


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def inserted(port: int) -> int:
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return -1
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("pinwatch_consumer_inserted_reports_total")
    )


def ready(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def dedup_set_mib(ids: int) -> float:
    """Memory of the consumer's report-id dedup memory at `ids` entries (consumers.dedup
    RecentIds itself, fed messages of 1,000 new native report ids), measured in a child
    interpreter: the part of the consumer's memory that grows to PINWATCH_DEDUP_MAX_IDS."""
    code = (
        "import time, uuid\n"
        "from consumers.decode import decode\n"
        "from consumers.dedup import RecentIds\n"
        "from pinwatch.record import Record, encode_batch\n"
        "from pinwatch.vocabulary import Format, Kind, Result\n"
        "def rss():\n"
        "    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])\n"
        "now = int(time.time() * 1000)\n"
        "def message():\n"
        "    return encode_batch([Record(id=str(uuid.uuid4()), kind=Kind.PIN_VALIDATION,\n"
        "        format=Format.NATIVE, app_id='com.example.bench', host='api.example.com',\n"
        "        received_at_ms=now, result=Result.OK) for _ in range(1000)])\n"
        "recent = RecentIds(None, 86400, 10**9)\n"
        "recent.fresh(decode(message())[0])\n"
        "before = rss()\n"
        f"for _ in range({ids} // 1000 - 1):\n"
        "    recent.fresh(decode(message())[0])\n"
        "print(rss() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout) / 1024


class UniqueRequests:
    """Raw requests whose report ids are all new: request k's ids carry k (same length as the
    uuids they replace, so Content-Length holds). Made when sent: a sequence, not a list."""

    ID = re.compile(rb'"id":"[0-9a-f-]{36}"')

    def __init__(self, per_request: int) -> None:
        template = bench_ingest._bodies(per_request, variants=1)[0]
        self.parts = self.ID.split(template)
        self.run = uuid.uuid4().hex[:8].encode()

    def __len__(self) -> int:
        return 10**12

    def __getitem__(self, k: int) -> bytes:
        out = [self.parts[0]]
        for i, part in enumerate(self.parts[1:]):
            out.append(b'"id":"%s-%012d-%014d"' % (self.run, k, i))
            out.append(part)
        return b"".join(out)


def run(args: argparse.Namespace) -> int:
    from devstack.localkafka import free_port, scratch_broker

    with (
        tempfile.TemporaryDirectory() as tmp_name,
        scratch_broker(
            Path(tmp_name) / "broker",
            bootstrap=args.bootstrap,
            say=lambda line: print(line, flush=True),
        ) as bootstrap,
    ):
        tmp = Path(tmp_name)
        ingest_port, consumer_port = free_port(), free_port()
        topic = f"bench-footprint-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "PINWATCH_KAFKA_BOOTSTRAP": bootstrap,
            "PINWATCH_KAFKA_TOPIC": topic,
            "PINWATCH_KAFKA_DEAD_LETTER_TOPIC": f"{topic}.dead-letter",
            "PINWATCH_KAFKA_CONSUMER_GROUP": f"{topic}-group",
            "PINWATCH_POLICY_FILE": str(bench_ingest._policy_file(tmp)),
            "PINWATCH_CLICKHOUSE_DSN": f"chdb:///{tmp / 'chdb'}",
            "PINWATCH_DATA_DIR": str(tmp / "data"),
            "PINWATCH_INGEST_PORT": str(ingest_port),
            "PINWATCH_CONSUMER_PORT": str(consumer_port),
            "PINWATCH_INGEST_RATE_LIMIT_PER_SECOND": "0",
            "PINWATCH_LOG_LEVEL": "WARNING",
        }
        pinwatch = [sys.executable, "-m", "pinwatch.cli"]
        children: dict[str, subprocess.Popen[bytes]] = {}
        sampler = None
        try:
            for name in ("ingest", "consume"):
                children[name] = subprocess.Popen([*pinwatch, name], cwd=tmp, env=env)
            wait_for("ingest", lambda: ready(ingest_port), 120)
            wait_for("the consumer", lambda: ready(consumer_port), 180)
            tracks = [Track(name, child.pid) for name, child in children.items()]
            sampler = Sampler(tracks)
            sampler.start()

            print(f"idle for {args.idle_seconds:g} s ...", flush=True)
            idle_start = time.monotonic()
            time.sleep(args.idle_seconds)  # the idle phase is a measured span, not a wait
            idle_end = time.monotonic()

            accepted = 0
            load_start = time.monotonic()
            consumer_cpu = bench_ingest._cpu_seconds(children["consume"].pid)
            for per_request in (50, 1):
                ingest_cpu = bench_ingest._cpu_seconds(children["ingest"].pid)
                print(
                    f"load: requests of {per_request} report(s), {args.connections} "
                    f"connections, {args.seconds:g} s ...",
                    flush=True,
                )
                result = asyncio.run(
                    bench_ingest.load(
                        ingest_port,
                        per_request,
                        args.connections,
                        args.seconds,
                        args.max_requests,
                        UniqueRequests(per_request),  # type: ignore[arg-type]
                    )
                )
                reports = result.requests * per_request
                accepted += reports
                used = bench_ingest._cpu_seconds(children["ingest"].pid) - ingest_cpu
                print(
                    f"  {result.reports_per_second(per_request):,.0f} reports/s accepted, "
                    f"{result.failures} failed; ingest CPU {used / reports * 1e6:,.1f} us a "
                    "report",
                    flush=True,
                )
            load_end = time.monotonic()
            print(f"drain: until the consumer has inserted all {accepted:,} ...", flush=True)
            wait_for(
                "the consumer to insert every report",
                lambda: inserted(consumer_port) >= accepted,
                args.drain_timeout,
            )
            drain_end = time.monotonic()
            used = bench_ingest._cpu_seconds(children["consume"].pid) - consumer_cpu
            print(
                f"  consumer CPU {used / accepted * 1e6:,.1f} us a report "
                f"(chDB's inserts included), {accepted / (drain_end - load_start):,.0f} "
                "reports/s from the first request to the last insert",
                flush=True,
            )
            wait_for(
                "a sample after the drain",
                lambda: all(t.samples and t.samples[-1].at > drain_end for t in tracks),
                10,
            )
        finally:
            if sampler is not None:
                sampler.stopping.set()
                sampler.join()
            for child in children.values():
                child.terminate()
            for child in children.values():
                child.wait(timeout=60)

    from pinwatch.settings import Settings

    cap = Settings.model_fields["dedup_max_ids"].default
    print(
        f"\nthe consumer's dedup memory at PINWATCH_DEDUP_MAX_IDS ({cap:,} ids): "
        f"{dedup_set_mib(cap):.0f} MiB"
    )
    print()
    print(
        "process  idle RSS  load RSS mean  peak RSS (HWM)  peak/idle  CPU cores load  busiest 5 s"
    )
    for track in tracks:
        idle = track.between(idle_start, idle_end)
        under_load = track.between(load_start, drain_end if track.name == "consume" else load_end)
        peak = max(s.hwm_mib for s in track.samples)
        idle_rss = statistics.median(s.rss_mib for s in idle)
        print(
            f"{track.name:8} {idle_rss:7.0f}M "
            f"{statistics.mean(s.rss_mib for s in under_load):13.0f}M {peak:14.0f}M "
            f"{peak / idle_rss:9.1f}x {cores(under_load):15.2f} "
            f"{busiest_window(under_load):11.2f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_footprint.py",
        description="RSS and CPU of `pinwatch ingest` and `pinwatch consume` under load.",
    )
    parser.add_argument("--bootstrap", default="", help="Kafka bootstrap (default: start one)")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle phase length")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each load")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument(
        "--max-requests", type=int, default=2_000_000, help="most requests in one load phase"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="longest wait for the consumer"
    )
    args = parser.parse_args(argv)
    # A terminated run still stops its broker and children (the `finally` in run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
