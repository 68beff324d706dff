"""`pinwatch probe` as a command: one round (--once), as a service, and bad input refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devstack.certs import CertificateAuthority
from devstack.localkafka import free_port
from tests.support.names import TEST_HOST
from tests.support.prober import REPO, pin_match, pinwatch, scrape, value, write_policy
from tests.support.tls_servers import SilentEdge, TlsEdge, free_port_on

pytestmark = pytest.mark.timeout(120)

EDGES = ("127.0.0.2", "127.0.0.3")


def test_probe_command_once_and_as_a_service(
    tmp_path: Path, ca: CertificateAuthority, public_roots_file: Path
) -> None:
    port = free_port_on(EDGES[0])
    policy = write_policy(tmp_path / "policy.yaml", ca, hosts={TEST_HOST: ("enforce", port)})
    env = {
        "PINWATCH_POLICY_FILE": str(policy),
        "PINWATCH_PUBLIC_ROOTS_FILE": str(public_roots_file),
        "PINWATCH_PROBE_RESOLVE": f'{{"{TEST_HOST}": ["{EDGES[0]}"]}}',
    }
    with TlsEdge(EDGES[0], port, ca, tmp_path / "a") as edge:
        edge.serve("primary")
        result = pinwatch("probe", "--once", env=env)
        assert result.code == 0, result.stderr
        assert f"{TEST_HOST} {EDGES[0]}: primary (enforce)" in result.stdout
        rotated = edge.serve("rotated")
        result = pinwatch("probe", "--once", env=env)
        assert result.code == 1
        assert f"{TEST_HOST} {EDGES[0]}: none (enforce), leaf {rotated.pins[0]}" in result.stdout

        metrics_port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pinwatch.cli",
                "probe",
                "--port",
                str(metrics_port),
                "--interval",
                "1",
            ],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            rounds = 0.0
            while time.monotonic() < deadline and rounds < 2:
                try:
                    s = scrape(f"http://127.0.0.1:{metrics_port}")
                    rounds = value(s, "pinwatch_probe_rounds_total") or 0.0
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            assert rounds >= 2, "the probe service never completed two rounds"
            assert pin_match(s, TEST_HOST, EDGES[0], "none") == 1
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr and "probe_stopped" in stderr


def test_probe_command_refuses_bad_input(tmp_path: Path, ca: CertificateAuthority) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apps: []\n")
    result = pinwatch("probe", "--once", "--policy", bad)
    assert result.clean_failure() and "invalid pin policy" in result.stderr
    policy = write_policy(tmp_path / "policy.yaml", ca, hosts={TEST_HOST: ("enforce", 443)})
    result = pinwatch("probe", "--once", "--policy", policy, "--resolve", "nonsense")
    assert result.clean_failure() and "--resolve wants HOST=ADDR" in result.stderr
    with SilentEdge("127.0.0.1", 0) as taken:
        result = pinwatch("probe", "--policy", policy, "--port", str(taken.port))
    assert result.clean_failure()
    assert f"cannot listen on 127.0.0.1:{taken.port}" in result.stderr
