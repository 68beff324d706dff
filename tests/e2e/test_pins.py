"""`pinwatch pins`, run as a process: the pins of a chain served by a real TLS server on
loopback (or read from PEM/DER files) equal what the openssl binary computes, leaf to root,
with each pin's role in the policy; bad input is refused with a message, never a traceback.

Tier: e2e (CLI processes against loopback TLS servers and the openssl binary).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from devstack.certs import CertificateAuthority
from tests.support.names import TEST_HOST
from tests.support.prober import pinwatch, write_policy
from tests.support.tls_servers import PlainTextPort, SilentEdge, TlsEdge, free_port_on

pytestmark = pytest.mark.timeout(180)


def openssl_pin(pem: str) -> str:
    """`openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256
    -binary | base64`, the pipeline every pinning guide gives."""
    pubkey = subprocess.run(
        ["openssl", "x509", "-pubkey", "-noout"], input=pem.encode(), capture_output=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pubkey, capture_output=True
    ).stdout
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-binary"], input=der, capture_output=True
    ).stdout
    assert len(digest) == 32, "openssl pipeline failed"
    return base64.b64encode(digest).decode()


def served_by_openssl(target: str, servername: str) -> list[str]:
    """The PEM certificates `openssl s_client -showcerts` receives, leaf first."""
    out = subprocess.run(
        ["openssl", "s_client", "-connect", target, "-servername", servername, "-showcerts"],
        input=b"",
        capture_output=True,
        timeout=30,
    ).stdout.decode()
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", out, re.S)


@pytest.fixture
def env(
    tmp_path: Path, ca: CertificateAuthority, public_roots_file: Path
) -> Iterator[dict[str, str]]:
    yield {
        "PINWATCH_PUBLIC_ROOTS_FILE": str(public_roots_file),
        "PINWATCH_PROBE_TIMEOUT_SECONDS": "2",
    }


def test_served_chain_pins_equal_openssl_with_roles(
    tmp_path: Path, ca: CertificateAuthority, env: dict[str, str]
) -> None:
    port = free_port_on("127.0.0.2")
    policy = write_policy(tmp_path / "policy.yaml", ca, hosts={TEST_HOST: ("enforce", port)})
    with TlsEdge("127.0.0.2", port, ca, tmp_path / "edge") as edge:
        edge.serve("primary")
        result = pinwatch(
            "pins",
            TEST_HOST,
            "--resolve",
            f"{TEST_HOST}=127.0.0.2",
            "--json",
            "--policy",
            policy,
            env=env,
        )
        assert result.code == 0, result.stderr
        served = served_by_openssl(edge.target, TEST_HOST)
    (answer,) = json.loads(result.stdout)
    chain = answer["chain"]
    # The server sends leaf and intermediate; the root comes from the public roots bundle.
    assert [c["pin"] for c in chain if c["served"]] == [openssl_pin(pem) for pem in served]
    root_pem = ca.public_root.public_bytes(Encoding.PEM).decode()
    assert (chain[-1]["served"], chain[-1]["pin"]) == (False, openssl_pin(root_pem))
    assert [c["position"] for c in chain] == ["leaf", "intermediate", "root"]
    assert [c["role"] for c in chain] == ["primary", "not pinned", "not pinned"]
    assert answer["pin_match"] == "primary" and answer["policy_host"] == TEST_HOST
    assert answer["addresses"] == ["127.0.0.2"]
    assert edge.server_names == [TEST_HOST, TEST_HOST]  # SNI sent, by us and by openssl


def test_rotated_key_is_not_pinned_and_two_edges_are_told_apart(
    tmp_path: Path, ca: CertificateAuthority, env: dict[str, str]
) -> None:
    port = free_port_on("127.0.0.2", "127.0.0.3")
    policy = write_policy(tmp_path / "policy.yaml", ca, hosts={TEST_HOST: ("enforce", port)})
    with (
        TlsEdge("127.0.0.2", port, ca, tmp_path / "a") as old,
        TlsEdge("127.0.0.3", port, ca, tmp_path / "b") as new,
    ):
        old.serve("primary")
        rotated = new.serve("rotated")
        result = pinwatch(
            "pins",
            TEST_HOST,
            "--resolve",
            f"{TEST_HOST}=127.0.0.2,127.0.0.3",
            "--policy",
            policy,
            env=env,
        )
    assert result.code == 0, result.stderr
    # One block per distinct chain, naming its edges.
    assert f"{TEST_HOST}:{port} at 127.0.0.2 (SNI {TEST_HOST})" in result.stdout
    assert f"{TEST_HOST}:{port} at 127.0.0.3 (SNI {TEST_HOST})" in result.stdout
    assert re.search(rf"0  leaf +{re.escape(rotated.pins[0])}  not pinned", result.stdout)
    assert re.search(rf"0  leaf +{re.escape(ca.pin('primary'))}  primary", result.stdout)
    assert result.stdout.count("pin match: none") == 1
    assert result.stdout.count("pin match: primary") == 1


def test_pem_and_der_files(tmp_path: Path, ca: CertificateAuthority, env: dict[str, str]) -> None:
    chain = ca.chain("backup")
    pem = tmp_path / "chain.pem"
    pem.write_text("".join(chain.pem))
    der = tmp_path / "leaf.der"
    der.write_bytes(chain.der[0])
    policy = write_policy(tmp_path / "policy.yaml", ca, hosts={TEST_HOST: ("enforce", 443)})

    result = pinwatch("pins", "--pem", pem, "--json", "--policy", policy, env=env)
    assert result.code == 0, result.stderr
    answer = json.loads(result.stdout)
    assert [c["pin"] for c in answer["chain"]] == [openssl_pin(p) for p in chain.pem]
    assert [c["role"] for c in answer["chain"]] == ["backup", "not pinned", "not pinned"]
    assert answer["policy_host"] == TEST_HOST  # found from the leaf's own name
    assert answer["pin_match"] == "backup"

    result = pinwatch("pins", "--der", der, "--policy", policy, env=env)
    assert result.code == 0, result.stderr
    assert f"0  leaf          {openssl_pin(chain.pem[0])}  backup" in result.stdout


def test_bad_input_is_refused_clearly(
    tmp_path: Path, ca: CertificateAuthority, env: dict[str, str]
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    closed = free_port_on("127.0.0.4")  # nothing listens there
    plain_port, silent_port = free_port_on("127.0.0.5"), free_port_on("127.0.0.6")
    with PlainTextPort("127.0.0.5", plain_port), SilentEdge("127.0.0.6", silent_port):
        cases = {
            "garbage PEM": (["--pem", garbage], "garbage.pem: not a valid PEM certificate"),
            "not PEM": (["--pem", text], "no PEM block"),
            "PEM as DER": (["--der", text], "neither PEM"),
            "missing file": (["--pem", tmp_path / "nope.pem"], "cannot read"),
            "refused": ([f"127.0.0.4:{closed}"], "connection refused"),
            "non-TLS port": ([f"127.0.0.5:{plain_port}"], "does not speak TLS"),
            "silent edge": ([f"127.0.0.6:{silent_port}"], "no TLS handshake within 2s"),
            "bad port": (["api.example.com:99999"], "port must be 1-65535"),
            "nothing given": ([], "give exactly one of"),
            "no such name": (["no-such-host.invalid"], "cannot resolve no-such-host.invalid"),
        }
        for name, (args, message) in cases.items():
            result = pinwatch("pins", *args, env=env)
            assert result.clean_failure(), (name, result)
            assert message in result.stderr, (name, result.stderr)
