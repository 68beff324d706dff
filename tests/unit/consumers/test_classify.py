"""Classification against the policy and the public roots, with real certificates."""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path

import msgspec
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from consumers.batch import Batch
from consumers.classify import Classifier, ClassifyError
from consumers.decode import decode
from consumers.metrics import ConsumerMetrics, VersionLabels, version_key
from consumers.steps import Classify, Step
from consumers.timings import Timings
from devstack.certs import CertificateAuthority, Chain
from pinwatch.policy import load_policy
from pinwatch.record import decode_batch, encode_batch_v1, encode_batch_v2
from pinwatch.roots import PublicRoots, RootsError
from pinwatch.vocabulary import ErrorCategory, Format, Kind, Result
from tests.support.names import REPORT_ONLY_HOST, TEST_APP, TEST_HOST
from tests.support.payloads import kafka_record


@pytest.fixture(scope="module")
def classifier(ca: CertificateAuthority, policy_file: Path, public_roots_file: Path) -> Classifier:
    return Classifier(load_policy(policy_file), PublicRoots.load(public_roots_file))


# a pin mismatch on the test app's pinned host, unless a test says otherwise
record = functools.partial(kafka_record, app_id=TEST_APP, host=TEST_HOST)


def test_public_chain_without_its_root_is_a_rotation(
    classifier: Classifier, ca: CertificateAuthority
) -> None:
    served = Chain(ca.chain("rotated").certs[:2])  # leaf + intermediate, root omitted
    c = classifier.classify(record(served_chain=served.b64, enforced=True))
    assert (c.cause, c.pin_match, c.public_root) == ("rotation_suspected", "none", True)
    assert c.observed_pins == served.pins
    assert c.leaf_pin == ca.pin("rotated")


def test_a_proxy_copying_the_public_roots_name_is_still_interception(
    classifier: Classifier, ca: CertificateAuthority
) -> None:
    # A forged "intermediate" that names the public root as issuer but is signed by another key:
    # only the signature check tells them apart.
    forger = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(ca.intermediate.subject)
        .issuer_name(ca.public_root.subject)
        .public_key(ca.keys["proxy"].public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(forger, hashes.SHA256())
    )
    chain = Chain((ca.chain("rotated").certs[0], forged))
    c = classifier.classify(record(served_chain=chain.b64))
    assert (c.cause, c.public_root) == ("interception_suspected", False)


def test_interception_and_missing_chain(classifier: Classifier, ca: CertificateAuthority) -> None:
    c = classifier.classify(record(served_chain=ca.intercepted_chain().b64))
    assert (c.cause, c.public_root) == ("interception_suspected", False)
    c = classifier.classify(record(observed_pins=[ca.pin("backup")]))
    assert (c.cause, c.pin_match, c.has_chain) == ("unknown", "backup", False)


def test_pin_match_enforced_and_phase(classifier: Classifier, ca: CertificateAuthority) -> None:
    ok = record(result=Result.OK, served_chain=ca.chain("backup").b64)
    c = classifier.classify(ok)
    assert (c.pin_match, c.cause, c.enforced, c.phase) == ("backup", "", True, "enforce")
    # enforced missing: the host's phase decides; sent: the report wins
    c = classifier.classify(record(host=REPORT_ONLY_HOST, served_chain=ca.chain("rotated").b64))
    assert (c.enforced, c.phase, c.policy_host) == (False, "report_only", REPORT_ONLY_HOST)
    c = classifier.classify(record(host=REPORT_ONLY_HOST, enforced=True))
    assert c.enforced is True
    # subdomain covered by include_subdomains; a host outside the policy matches nothing
    c = classifier.classify(record(host=f"a.b.{TEST_HOST}", observed_pins=[ca.pin("primary")]))
    assert (c.policy_host, c.pin_match) == (TEST_HOST, "primary")
    c = classifier.classify(record(host="elsewhere.example", observed_pins=[ca.pin("primary")]))
    assert (c.policy_host, c.pin_match, c.phase, c.enforced) == ("", "", "", False)


def test_a_report_without_pins_matches_nothing_rather_than_none(
    classifier: Classifier, ca: CertificateAuthority
) -> None:
    """`none` means pins were seen and none of them is pinned (a would-fail chain); a report
    that carries no pins at all (NEL: the browser sends no keys) tells nothing about the keys."""
    nel = functools.partial(record, format=Format.NEL, enforced=True)
    ok = classifier.classify(nel(result=Result.OK))
    assert (ok.pin_match, ok.cause, ok.leaf_pin) == ("", "", "")
    failed = classifier.classify(nel(result=Result.PIN_MISMATCH))
    assert (failed.pin_match, failed.cause, failed.enforced) == ("", "unknown", True)
    # with pins but no chain, the client's pins are matched as before
    seen = classifier.classify(nel(observed_pins=[ca.pin("rotated")]))
    assert (seen.pin_match, seen.cause) == ("none", "unknown")


def test_client_pins_are_checked_against_the_chain(
    classifier: Classifier, ca: CertificateAuthority
) -> None:
    chain = ca.chain("rotated")
    lying = classifier.classify(record(served_chain=chain.b64, observed_pins=[ca.pin("primary")]))
    # the chain is the evidence: its pins decide, and the disagreement is kept
    assert (lying.pin_match, lying.client_pins_consistent) == ("none", False)
    honest = classifier.classify(record(served_chain=chain.b64, observed_pins=chain.pins))
    assert honest.client_pins_consistent


def test_network_errors_carry_no_pin_fields(classifier: Classifier) -> None:
    c = classifier.classify(record(kind=Kind.NETWORK_ERROR, result=None, error=ErrorCategory.DNS))
    assert (c.pin_match, c.cause, c.observed_pins, c.policy_host) == ("", "", [], TEST_HOST)


def test_a_chain_that_is_not_certificates_is_unclassifiable(classifier: Classifier) -> None:
    with pytest.raises(ClassifyError, match=r"served_chain\[0\]"):
        classifier.classify(record(served_chain=["bm90IGEgY2VydA=="]))


def test_roots_bundle_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "roots.pem"
    bad.write_text("not pem")
    with pytest.raises(RootsError, match="roots.pem"):
        PublicRoots.load(bad)
    with pytest.raises(RootsError, match="missing.pem"):
        PublicRoots.load(tmp_path / "missing.pem")


def test_certifi_bundle_loads() -> None:
    import certifi

    assert len(PublicRoots.load(certifi.where())) > 100


def test_version_labels_keep_the_highest_versions() -> None:
    labels = VersionLabels(limit=2)
    assert labels.label("app", "5.2.0") == "5.2.0"
    assert labels.label("app", "5.10.0") == "5.10.0"
    assert labels.label("app", "5.1.9") == "other"  # lower than both kept versions
    assert labels.label("app", "6.0.0") == "6.0.0"
    assert labels.label("app", "5.2.0") == "other"  # pushed out by 6.0.0
    assert labels.label("other.app", "1.0") == "1.0"  # per app
    assert version_key("5.10.0") > version_key("5.9.1") > version_key("5.9")


def test_decode_rejects_records_one_by_one() -> None:
    """Version 1 envelopes (JSON, one object per record), still read for one release."""
    good = record()
    envelope = orjson.loads(encode_batch_v1([good]))
    envelope["records"].append({"kind": "pin_validation"})
    block, rejected = decode(orjson.dumps(envelope))
    assert block.ids == [good.id]
    assert block.profiles[0].port == 443  # defaults of the Record schema filled in
    assert [(r.reason, r.index) for r in rejected] == [("invalid_record", 1)]
    # a wrongly typed field is this record's problem, not its batch's insert's
    envelope["records"][1] = dict(envelope["records"][0], count="3")
    block, rejected = decode(orjson.dumps(envelope))
    assert len(block) == 1 and "count: expected int" in rejected[0].detail
    envelope["records"][1] = dict(envelope["records"][0], served_chain=[1])
    assert "served_chain" in decode(orjson.dumps(envelope))[1][0].detail
    envelope["records"][1] = dict(envelope["records"][0], surprise=True)
    assert "surprise" in decode(orjson.dumps(envelope))[1][0].detail
    block, rejected = decode(b"{not json")
    assert not len(block) and rejected[0].reason == "undecodable_message"
    block, rejected = decode(orjson.dumps({"v": 99, "records": []}))
    assert rejected[0].reason == "undecodable_message" and "v1" in rejected[0].detail


def test_decode_columns_rejects_reports_one_by_one() -> None:
    """Version 2 envelopes (columns as lists, read for one release): a bad value sinks its
    report only, and the dead letter is a one-report envelope that decodes."""
    good, bad = record(), record()
    envelope = msgspec.msgpack.decode(encode_batch_v2([good, bad]))
    envelope["rows"][6][1] = "3"  # count
    block, rejected = decode(msgspec.msgpack.encode(envelope))
    assert block.ids == [good.id] and list(block.index) == [0]
    assert [(r.reason, r.index) for r in rejected] == [("invalid_record", 1)]
    assert "count: expected int" in rejected[0].detail
    assert [r.id for r in decode_batch(rejected[0].value)] == [bad.id]
    envelope["profile"][1] = 7  # not a profile of the message
    assert "profile" in decode(msgspec.msgpack.encode(envelope))[1][0].detail
    envelope["rows"].pop()
    block, rejected = decode(msgspec.msgpack.encode(envelope))
    assert not len(block) and rejected[0].reason == "undecodable_message"
    assert decode(b"\x93junk")[1][0].reason == "undecodable_message"


def test_a_version_pushed_out_of_the_labels_is_counted_as_other(classifier: Classifier) -> None:
    """Classify caches labels per profile; a version that loses its label slot must not keep
    it through that cache."""
    metrics = ConsumerMetrics(max_app_versions=1)
    classify = Classify(Step(), classifier, metrics, 0, None, Timings())  # type: ignore[arg-type]
    keys = []
    for version in ("5.1.0", "5.2.0", "5.1.0"):
        block, _ = decode(encode_batch_v2([record(app_version=version, enforced=True)]))
        ((_, key, _),) = [classify.labels(p) for p in block.profiles]
        keys.append(key[3])
    assert keys == ["5.1.0", "5.2.0", "other"]


def test_insert_token_is_the_offset_ranges_and_their_timestamps() -> None:
    a, b = Batch(), Batch()
    for batch in (a, b):
        batch.first = {("t", 0): 10, ("t", 1): 3}
        batch.last = {("t", 0): 19, ("t", 1): 3}
        batch.stamps = {("t", 0): (1000, 1900), ("t", 1): (1300, 1300)}
    assert a.token() == b.token()  # a replay of the same messages
    b.last[("t", 0)] = 20
    assert a.token() != b.token()
    assert a.commit_offsets() == {("t", 0): 20, ("t", 1): 4}
    b.last[("t", 0)] = 19
    b.stamps[("t", 1)] = (5300, 5300)  # the same offsets of a topic created again
    assert a.token() != b.token()
