"""Time to page without a single client: from a TLS edge starting to serve a key the policy
does not pin to the on-call webhook receiving PinwatchProbeUnpinnedKey.

Everything real and at production timing: `pinwatch probe` as its own process at the default
interval (PINWATCH_PROBE_INTERVAL_SECONDS, 15 s), a Prometheus scraping it and evaluating the
shipped alerts/rules.yml every 15 s, an Alertmanager with the shipped routing (page
group_wait 10 s) posting to a webhook here. Each round rotates the edge of its own policy host
(an alert group of its own, so rounds do not wait for each other's resolve) at a random moment
of the probe's cycle, so the rounds sample the phase of the three independent clocks.

The baseline, in the same run: the sum of the intervals on the path (probe interval + scrape
interval + evaluation interval + group_wait), the worst case the design promises; the script
prints each figure, their median and maximum, and both as ratios to that worst case and to the
60 s goal of issue 21.

    .venv/bin/python benchmarks/bench_probe.py             # 5 rounds, about 5 minutes
    .venv/bin/python benchmarks/bench_probe.py --rounds 10
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from tls_servers import TlsEdge, free_port_on  # noqa: E402

from alerts import generate  # noqa: E402
from alerts.alertmanager import alertmanager_config  # noqa: E402
from alerts.config import CONFIG  # noqa: E402
from devstack.certs import CertificateAuthority  # noqa: E402
from devstack.localkafka import free_port  # noqa: E402
from devstack.monitoring import LocalAlertmanager, LocalPrometheus, query  # noqa: E402
from devstack.stack import PageReceiver  # noqa: E402
from pinwatch.settings import Settings  # noqa: E402

GOAL_SECONDS = 60.0


def _seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


def wait(check, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"bench_probe: {what} did not happen within {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    settings = Settings()
    interval = settings.probe_interval_seconds
    scrape = evaluation = 15.0
    group_wait = _seconds(CONFIG.page_group_wait)
    worst = interval + scrape + evaluation + group_wait

    work = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    ca = CertificateAuthority.load(work / "pki", host="api.bench.test")
    roots = work / "roots.pem"
    roots.write_bytes(ca.public_roots_pem())
    addresses = [f"127.0.0.{20 + i}" for i in range(args.rounds)]
    hosts = [f"edge{i}.bench.test" for i in range(args.rounds)]
    port = free_port_on(*addresses)
    pins = (
        f'      - {{sha256: "{ca.pin("primary")}", role: primary}}\n'
        f'      - {{sha256: "{ca.pin("backup")}", role: backup}}\n'
    )
    policy = work / "policy.yaml"
    policy.write_text(
        'apps:\n  - id: com.bench.app\n    ingest_keys: ["bench-ingest-key-0123456789"]\nhosts:\n'
        + "".join(
            f"  - host: {h}\n    phase: enforce\n    port: {port}\n    pins:\n{pins}" for h in hosts
        )
    )
    resolve = ", ".join(f'"{h}": ["{a}"]' for h, a in zip(hosts, addresses, strict=True))
    probe_port = free_port()
    edges = [TlsEdge(a, port, ca, work / "edges") for a in addresses]
    receiver = PageReceiver(free_port(), lambda _line: None)
    am_config = alertmanager_config(
        oncall_webhook_url=f"{receiver.url}/page", webhook_url=f"{receiver.url}/notify"
    )
    alertmanager = LocalAlertmanager(work / "am", config=generate.dump(am_config))
    prometheus: LocalPrometheus | None = None
    probe = None
    results: list[float] = []
    try:
        for edge in edges:
            edge.start().serve("primary")
        receiver.start()
        alertmanager.start()
        prometheus = LocalPrometheus(
            work / "prom",
            jobs={CONFIG.probe_job: [f"127.0.0.1:{probe_port}"]},
            scrape_interval=scrape,
            evaluation_interval=evaluation,
            alertmanager_url=alertmanager.url,
        )
        prometheus.start()
        probe = subprocess.Popen(
            [sys.executable, "-m", "pinwatch.cli", "probe", "--port", str(probe_port)],
            cwd=REPO,
            env={
                **os.environ,
                "PINWATCH_POLICY_FILE": str(policy),
                "PINWATCH_PUBLIC_ROOTS_FILE": str(roots),
                "PINWATCH_PROBE_RESOLVE": "{" + resolve + "}",
                "PINWATCH_LOG_FORMAT": "text",
            },
            stdout=subprocess.DEVNULL,
            stderr=open(work / "probe.log", "wb"),  # noqa: SIM115 - closed with the process
        )
        print(
            f"bench_probe: probe every {interval:g}s, scrape {scrape:g}s, evaluation "
            f"{evaluation:g}s, page group_wait {group_wait:g}s; {args.rounds} rounds"
        )
        ready = 'count(pinwatch_probe_pin_match{pin_set="policy",pin_match="primary"} == 1)'
        url = prometheus.url
        wait(
            lambda: (r := query(url, ready)) and float(r[0]["value"][1]) >= len(hosts),
            120,
            "Prometheus seeing every edge on the primary key",
        )
        for i, (host, edge) in enumerate(zip(hosts, edges, strict=True)):
            time.sleep(random.uniform(0, interval))  # a random phase of the probe's cycle
            edge.serve("rotated")
            rotated_at = time.time()

            def paged(host: str = host) -> float | None:
                for page in receiver.pages():
                    for alert in page.alerts:
                        labels = alert["labels"]
                        if (labels["alertname"], labels.get("host")) == (
                            "PinwatchProbeUnpinnedKey",
                            host,
                        ):
                            return page.received_at
                return None

            received = wait(paged, 180, f"a page for {host}")
            results.append(received - rotated_at)
            print(f"  round {i + 1}: {results[-1]:.1f}s from rotation to delivered page")
    finally:
        if probe is not None:
            probe.terminate()
            probe.wait(timeout=30)
        if prometheus is not None:
            prometheus.stop()
        alertmanager.stop()
        receiver.stop()
        for edge in edges:
            edge.stop()
    median, worst_seen = statistics.median(results), max(results)
    print(
        f"time to page: median {median:.1f}s, max {worst_seen:.1f}s over {len(results)} rounds\n"
        f"  vs the path's worst case {worst:.0f}s (baseline): median {median / worst:.2f}, "
        f"max {worst_seen / worst:.2f}\n"
        f"  vs the {GOAL_SECONDS:.0f}s goal: median {median / GOAL_SECONDS:.2f}, "
        f"max {worst_seen / GOAL_SECONDS:.2f}"
    )
    return 0 if worst_seen <= GOAL_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
