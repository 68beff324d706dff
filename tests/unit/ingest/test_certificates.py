"""Every certificate ingest accepts has a public key it can hash (issue #17): a chain entry that
parses as X.509 but whose key cannot be loaded (an unknown key algorithm, an EC point off the
curve) is refused with the same 400 in every format that carries certificates, naming the
entry, instead of reaching the consumer's classifier."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from devstack.certs import CertificateAuthority
from devstack.clients import (
    hpkp_report,
    native_batch,
    pem_openssl,
    pin_validation,
    trustkit_android,
)
from ingest.formats import hpkp, trustkit
from ingest.formats.base import BadReport, IngestContext
from ingest.formats.native import decode_native, parse_native
from pinwatch.policy import load_policy
from pinwatch.privacy import DeviceHasher
from pinwatch.settings import Settings
from tests.support.names import TEST_APP, TEST_HOST
from tests.support.payloads import unusable_key_certificates

UNUSABLE = "not an X.509 certificate with a usable public key"


@pytest.fixture
def context(policy_file: Path) -> IngestContext:
    settings = Settings(policy_file=policy_file)
    return IngestContext(
        app_id=TEST_APP,
        received_at_ms=1_795_000_000_000,
        client_network="198.51.100.0/24",
        hash_device=DeviceHasher("unit-test-key"),
        settings=settings,
        policy=load_policy(policy_file),
    )


def _variants(ca: CertificateAuthority) -> list[tuple[str, bytes]]:
    return sorted(unusable_key_certificates(ca.chain().certs[0]).items())


@pytest.mark.parametrize("variant", ["unknown_key_algorithm", "point_off_curve"])
def test_native_chain_with_an_unusable_key_is_refused(
    ca: CertificateAuthority, context: IngestContext, variant: str
) -> None:
    bad = dict(_variants(ca))[variant]
    report = pin_validation(TEST_HOST, ca.chain(), result="pin_mismatch")
    report["served_chain"] = [report["served_chain"][0], base64.b64encode(bad).decode()]
    body = orjson.dumps(native_batch([report], app=TEST_APP))
    with pytest.raises(BadReport) as refused:
        parse_native(decode_native(body, context.settings), context)
    assert (refused.value.field, refused.value.problem) == ("reports[0].served_chain[1]", UNUSABLE)
    assert refused.value.status == 400


@pytest.mark.parametrize("variant", ["unknown_key_algorithm", "point_off_curve"])
def test_every_format_refuses_it_alike(
    ca: CertificateAuthority, context: IngestContext, variant: str
) -> None:
    bad = dict(_variants(ca))[variant]
    tk = trustkit_android(TEST_HOST, ca.chain(), known_pins=[ca.pin("primary")])
    tk["validated-certificate-chain"][0] = pem_openssl(bad)
    hp = hpkp_report(TEST_HOST, ca.chain(), known_pins=[ca.pin("primary")])
    hp["served-certificate-chain"][0] = pem_openssl(bad)
    for parse, document, field in (
        (trustkit.parse, tk, "validated-certificate-chain[0]"),
        (hpkp.parse, hp, "served-certificate-chain[0]"),
    ):
        with pytest.raises(BadReport) as refused:
            parse(document, context)
        assert (refused.value.field, refused.value.problem) == (field, UNUSABLE)


def test_good_chains_still_pass_and_verdicts_are_cached(
    ca: CertificateAuthority, context: IngestContext
) -> None:
    """The verdict on a certificate is remembered (a chain repeats in every report of a
    device), and a good chain's records carry it as sent."""
    from ingest.formats import native

    native._certificate_problem.cache_clear()
    report = pin_validation(TEST_HOST, ca.chain("rotated"), result="pin_mismatch")
    body = orjson.dumps(native_batch([report, dict(report, id="second")], app=TEST_APP))
    parsed = parse_native(decode_native(body, context.settings), context)
    assert [r.served_chain for r in parsed.records] == [report["served_chain"]] * 2
    info = native._certificate_problem.cache_info()
    assert (info.misses, info.hits) == (len(report["served_chain"]), len(report["served_chain"]))
