"""Shared by the prober's tests: run `pinwatch` as a process, and write a pin policy for the
test PKI whose hosts are served by loopback edges on a given port."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devstack.certs import CertificateAuthority
from tests.support.paths import REPO


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def clean_failure(self) -> bool:
        """A refusal a user can read: non-zero, a message, and no Python traceback."""
        return self.code != 0 and bool(self.stderr.strip()) and "Traceback" not in self.stderr


def pinwatch(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "pinwatch.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PINWATCH_LOG_FORMAT": "text", **(env or {})},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def write_policy(
    path: Path,
    ca: CertificateAuthority,
    *,
    hosts: dict[str, tuple[str, int]],
    extra_app: str = "",
    pins: list[tuple[str, str]] | None = None,
) -> Path:
    """A policy pinning the test PKI's primary and backup keys for each host
    (name -> (phase, port))."""
    pins = pins or [(ca.pin("primary"), "primary"), (ca.pin("backup"), "backup")]
    pin_lines = "".join(
        f'      - {{sha256: "{pin}", role: {role}, label: {role}-key}}\n' for pin, role in pins
    )
    text = (
        "apps:\n"
        "  - id: com.example.pinned\n"
        '    ingest_keys: ["test-ingest-key-0123456789"]\n' + extra_app + "hosts:\n"
    )
    for name, (phase, port) in hosts.items():
        text += f"  - host: {name}\n    phase: {phase}\n    port: {port}\n    pins:\n" + pin_lines
    path.write_text(text)
    return path


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def pin_match(samples: dict, host: str, address: str, match: str) -> float | None:
    """`pinwatch_probe_pin_match` of one edge under the host's policy pin set."""
    return value(
        samples,
        "pinwatch_probe_pin_match",
        host=host,
        address=address,
        pin_set="policy",
        pin_match=match,
    )


def series(samples: dict, name: str, **labels: str) -> list[dict[str, str]]:
    """Label sets of `name` whose labels include `labels`."""
    return [
        dict(key)
        for (n, key), _ in samples.items()
        if n == name and labels.items() <= dict(key).items()
    ]
