"""Nothing a record holds stops the consumer: every record is stored or dead-lettered.

A Kafka message reaches the consumer from ingest (which checks a lot, but an ingest before a fix
or a hostile producer with access to the topic check nothing), so every field may hold anything
that decodes: certificates with altered key OIDs, EC points off the curve, truncated or flipped
DER, strings of any size and script, numbers at every boundary.

- The property test generates such messages (as recipes: plain data Hypothesis can shrink and
  `@example` can name) and drives each through the consumer's own steps, as `Consumer._handle`
  runs them (decode, received-time window, enrich/classify, evidence sampling), then the
  Writer's column building and one real insert into chDB, then the metrics a commit would
  apply and the rollout's reading of the stored evidence. No exception may escape, and every
  record is counted exactly once: a row, a duplicate of an id already counted, or a dead letter.
  Only the dead-letter producer is replaced (by a list); the next test sends them to Kafka.
- The integration test produces a message holding good records and the issue's record (a P-256
  leaf whose key OID ends in 09 instead of 01) onto a real topic: a real consumer dead-letters
  that record and stores the good ones of the same message and of the messages after it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, event, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from consumers.rollout.evidence import describe
from consumers.schema import EVIDENCE_COLUMN_NAMES
from devstack.certs import CertificateAuthority
from devstack.clients import trustkit_ios
from pinwatch.record import (
    ErrorCategory,
    Format,
    Kind,
    Record,
    Result,
    decode_batch,
    encode_batch,
    encode_json,
)
from pinwatch.settings import Settings
from tests.support.names import TEST_APP, TEST_HOST
from tests.support.payloads import kafka_record
from tests.support.pipeline import (
    HandDriven,
    KafkaMessage,
    migrated_store,
    produce,
    read_topic,
    run_pipeline,
)

EC_KEY_OID = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
P256_OID = bytes.fromhex("06082a8648ce3d030107")  # prime256v1
RSA_KEY_OID = bytes.fromhex("06092a864886f70d010101")  # rsaEncryption
ED25519_OID = bytes.fromhex("06032b6570")
DAY_MS = 86_400_000


# --- certificates and their mutations ----------------------------------------------------------


def other_key_certificates() -> dict[str, bytes]:
    """Valid self-signed certificates with keys the test PKI does not use: RSA and Ed25519."""
    out = {}
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for name, key in (
        ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ed25519", ed25519.Ed25519PrivateKey.generate()),
    ):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.pinwatch.test")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(key, None if name == "ed25519" else hashes.SHA256())
        )
        out[name] = cert.public_bytes(serialization.Encoding.DER)
    return out


def with_key_oid(der: bytes, last_byte: int) -> bytes:
    """The key algorithm OID's last byte changed: the issue's certificate is a P-256 leaf with
    id-ecPublicKey ending in 09 instead of 01, an OID `cryptography` does not know."""
    if EC_KEY_OID in der:
        oid, at = EC_KEY_OID, der.index(EC_KEY_OID)
    elif RSA_KEY_OID in der:
        oid, at = RSA_KEY_OID, der.index(RSA_KEY_OID)
    else:  # Ed25519 names one OID for signature and key: the key's is the second
        oid = ED25519_OID
        at = der.index(oid, der.index(oid) + 1)
    end = at + len(oid)
    return der[: end - 1] + bytes([last_byte]) + der[end:]


def off_curve(der: bytes) -> bytes:
    """The EC point's last byte (of Y) changed: the point is no longer on P-256. (RSA and
    Ed25519 certificates get a byte flipped halfway, inside or near their key.)"""
    point = len(der) // 2
    if P256_OID in der:
        point = der.index(P256_OID) + len(P256_OID) + 3 + 64  # BIT STRING header, 04, X, Y
    return der[:point] + bytes([der[point] ^ 0x01]) + der[point + 1 :]


def mutate(der: bytes, mutation: tuple[Any, ...]) -> str:
    """A served_chain entry: `der` mutated as the recipe says, base64 (unless it says not)."""
    kind = mutation[0]
    if kind == "flip":  # ("flip", [(position, xor), ...])
        data = bytearray(der)
        for position, xor in mutation[1]:
            data[position % len(data)] ^= xor or 1
        der = bytes(data)
    elif kind == "key_oid":
        der = with_key_oid(der, mutation[1])
    elif kind == "off_curve":
        der = off_curve(der)
    elif kind == "truncate":
        der = der[: mutation[1] % len(der)]
    elif kind == "append":
        der = der + mutation[1]
    elif kind == "bytes":
        der = mutation[1]
    elif kind == "text":  # not base64 at all
        return mutation[1]
    return base64.b64encode(der).decode("ascii")


# --- recipes -----------------------------------------------------------------------------------
# A message recipe is ("envelope", version, [record recipe, ...]) or ("raw", bytes). A record
# recipe is (base, [edit, ...]); an edit is ("cert", index, source, mutation), ("set", field,
# value recipe), ("drop", field) or ("extra", name, value recipe). Value recipes are JSON values,
# or ("huge", text, times) and ("days_ago", n) built when the message is.

BASES = ("primary", "rotated", "intercepted", "no_chain", "network_error", "trustkit")
FIELDS = tuple(f.name for f in dataclasses.fields(Record))
CERT_SOURCES = ("leaf", "intermediate", "root", "proxy", "rsa", "ed25519")
BOUNDARY_INTS = (
    0, 1, -1, 443, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**63 - 1, 2**63,
    2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, -62_135_596_800_000 - 1,
    253_402_300_799_999 + 1, -2_208_988_800_000,
)  # fmt: skip

certificate_mutations = st.one_of(
    st.just(("keep",)),
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
    ),
    st.tuples(st.just("key_oid"), st.integers(0, 255)),
    st.just(("off_curve",)),
    st.tuples(st.just("truncate"), st.integers(0, 2000)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("bytes"), st.binary(max_size=256)),
    st.tuples(st.just("text"), st.text(max_size=64)),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(BOUNDARY_INTS),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(("pin_validation", "network_error", "ok", "pin_mismatch", "timeout", "")),
    st.sampled_from(("native", "trustkit", "hpkp", "nel", "ios", "other", "9" * 40)),
)
values = st.one_of(
    json_scalars,
    st.lists(st.one_of(st.text(max_size=60), st.integers()), max_size=4),
    st.tuples(
        st.just("huge"),
        st.sampled_from(("9", "a.", "é", "\x00", "𝔭", " ")),
        st.integers(1, 200_000),
    ),
    st.tuples(st.just("days_ago"), st.integers(-400, 400)),
)
edits = st.one_of(
    st.tuples(
        st.just("cert"), st.integers(0, 3), st.sampled_from(CERT_SOURCES), certificate_mutations
    ),
    st.tuples(st.just("set"), st.sampled_from(FIELDS), values),
    st.tuples(st.just("drop"), st.sampled_from(FIELDS)),
    st.tuples(st.just("extra"), st.text(min_size=1, max_size=12), json_scalars),
)
record_recipes = st.tuples(st.sampled_from(BASES), st.lists(edits, max_size=4))
v1_envelopes = st.tuples(
    st.just("envelope"), st.just(1), st.lists(record_recipes, min_size=1, max_size=5)
)
message_recipes = st.one_of(
    v1_envelopes,
    st.tuples(
        st.just("envelope"), st.sampled_from((0, 2, -1)), st.lists(record_recipes, max_size=2)
    ),
    st.tuples(st.just("raw"), st.binary(max_size=200)),
    v1_envelopes,  # (three times in four: the records are what the test is about)
    v1_envelopes,
    v1_envelopes,
    v1_envelopes,
)


class Material:
    """Certificates to build records from (a plain class: Hypothesis prints the fixtures of a
    failing example, and would print every certificate of a dataclass)."""

    def __init__(
        self, ca: CertificateAuthority, ders: dict[str, bytes], chains: dict[str, list[str]]
    ) -> None:
        self.ca, self.ders, self.chains = ca, ders, chains

    @classmethod
    def make(cls, ca: CertificateAuthority) -> Material:
        public, intercepted = ca.chain("primary"), ca.intercepted_chain()
        ders = {
            "leaf": public.der[0],
            "intermediate": public.der[1],
            "root": public.der[2],
            "proxy": intercepted.der[0],
            **other_key_certificates(),
        }
        return cls(
            ca,
            ders,
            {
                "primary": public.b64,
                "rotated": ca.chain("rotated").b64,
                "intercepted": intercepted.b64,
            },
        )

    def base(self, name: str, serial: str) -> dict[str, Any]:
        pins = {"primary": self.ca.chain("primary").pins}
        if name == "network_error":
            record = kafka_record(
                app_id=TEST_APP,
                host=TEST_HOST,
                kind=Kind.NETWORK_ERROR,
                result=None,
                error=ErrorCategory.TIMEOUT,
                detail="NSURLErrorTimedOut",
            )
        elif name == "trustkit":
            raw = trustkit_ios(TEST_HOST, self.ca.chain("rotated"), known_pins=pins["primary"])
            record = kafka_record(
                app_id=TEST_APP,
                host=TEST_HOST,
                format=Format.TRUSTKIT,
                served_chain=self.chains["rotated"],
                raw=json.dumps(raw),
            )
        else:
            record = kafka_record(
                app_id=TEST_APP,
                host=TEST_HOST,
                result=Result.OK if name == "primary" else Result.PIN_MISMATCH,
                enforced=True,
                device=f"device-{serial}",
                app_version="5.2.0",
                platform="ios",
                served_chain=[] if name == "no_chain" else self.chains[name],
                observed_pins=pins["primary"] if name == "no_chain" else [],
            )
        data = json.loads(encode_json(record))
        data["id"] = f"{data['id']}-{serial}"
        return data

    def value(self, recipe: Any, now_ms: int) -> Any:
        if isinstance(recipe, tuple) and recipe and recipe[0] == "huge":
            return recipe[1] * recipe[2]
        if isinstance(recipe, tuple) and recipe and recipe[0] == "days_ago":
            return now_ms - recipe[1] * DAY_MS
        return recipe

    def record(self, recipe: tuple[str, list[Any]], serial: str, now_ms: int) -> dict[str, Any]:
        base, record_edits = recipe
        data = self.base(base, serial)
        for edit in record_edits:
            if edit[0] == "cert":
                _, index, source, mutation = edit
                chain = data.get("served_chain")
                if not isinstance(chain, list) or not chain:  # an earlier edit replaced it
                    chain = list(self.chains["primary"])
                chain[index % len(chain)] = mutate(self.ders[source], mutation)
                data["served_chain"] = chain
            elif edit[0] == "set":
                data[edit[1]] = self.value(edit[2], now_ms)
            elif edit[0] == "drop":
                data.pop(edit[1], None)
            else:
                data[edit[1]] = self.value(edit[2], now_ms)
        return data

    def message(self, recipe: tuple[Any, ...], serial: str) -> tuple[bytes, int | None]:
        """(Kafka message value, how many records it carries; None: not an envelope)."""
        if recipe[0] == "raw":
            return recipe[1], None
        _, version, records = recipe
        now_ms = int(time.time() * 1000)
        built = [self.record(r, f"{serial}-{i}", now_ms) for i, r in enumerate(records)]
        # json, not orjson: integers beyond 64 bits are part of the test
        value = json.dumps({"v": version, "records": built}).encode()
        return value, len(built) if version == 1 else None


# --- the consumer's steps, without Kafka ------------------------------------------------------


@pytest.fixture(scope="module")
async def steps(make_module_settings: Callable[..., Settings]) -> AsyncIterator[HandDriven]:
    # The dead-letter limit is the engine's (tests/integration/consumers/test_pipeline.py): not
    # tested here.
    settings = make_module_settings(dead_letter_min_records=10**9, evidence_per_pin_hour=1000)
    async with migrated_store(settings) as store:
        yield HandDriven(settings, store)


@pytest.fixture(scope="module")
def material(ca: CertificateAuthority) -> Material:
    return Material.make(ca)


def _spread_over_days(n: int) -> tuple[Any, ...]:
    return (
        "envelope",
        1,
        [("rotated", [("set", "received_at_ms", ("days_ago", i))]) for i in range(n)],
    )


OFFSETS = itertools.count()  # one Kafka offset per generated message
ISSUE_OID = ("envelope", 1, [("primary", [("cert", 0, "leaf", ("key_oid", 0x09))])])


@hsettings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples in CI as here; new ones come from new recipes
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(recipe=message_recipes)
@example(recipe=ISSUE_OID)  # the issue: UnsupportedAlgorithm from the classifier
@example(recipe=("envelope", 1, [("rotated", [("cert", 0, "leaf", ("off_curve",))])]))
@example(recipe=("envelope", 1, [("intercepted", [("cert", 1, "root", ("key_oid", 0x02))])]))
@example(recipe=("envelope", 1, [("primary", [("set", "event_at_ms", 2**64)])]))  # > Int64
@example(recipe=("envelope", 1, [("primary", [("set", "sent_at_ms", 2**63 - 1)])]))  # unreadable
@example(recipe=("envelope", 1, [("primary", [("set", "app_version", ("huge", "7", 5000))])]))
@example(recipe=("envelope", 1, [("primary", [("set", "host", ("huge", "a.", 30_000))])]))
@example(recipe=("envelope", 1, [("primary", [("set", "received_at_ms", ("days_ago", 20_000))])]))
@example(recipe=_spread_over_days(150))  # 150 partitions in one insert
async def test_any_record_is_stored_or_dead_lettered_and_nothing_escapes(
    steps: HandDriven, material: Material, recipe: tuple[Any, ...]
) -> None:
    consumer, settings = steps.consumer, steps.consumer.settings
    offset = next(OFFSETS)
    value, carried = material.message(recipe, f"{offset}")
    steps.dead.clear()
    steps.discard()  # an earlier example's message that stored nothing
    await steps.handle(settings.kafka_topic, 0, KafkaMessage(offset, value))
    batch = steps.batch

    whole = [h for _, h in steps.dead if "pinwatch-record-index" not in h]
    per_record = [h for _, h in steps.dead if "pinwatch-record-index" in h]
    event("message dead-lettered" if whole else f"{batch.rows} stored")
    for headers in per_record:
        event(f"record dead-lettered: {headers['pinwatch-reason'].decode()}")
    if carried is None:  # not a v1 envelope at all: the message goes to the dead-letter topic
        assert len(whole) == 1 and not batch.rows
    elif whole:  # an envelope that does not decode as one (e.g. a record that is not an object)
        assert len(whole) == 1 and not batch.rows and not per_record
    else:
        await steps.write()
        rows = await consumer.store.scalar(
            "SELECT count() FROM {db}.reports WHERE kafka_offset = {o:UInt64}", {"o": offset}
        )
        assert rows == batch.rows
        assert rows + batch.duplicates + len(per_record) == carried
        for headers in per_record:
            assert headers["pinwatch-reason"] in (b"invalid_record", b"unclassifiable_record")
            assert headers["pinwatch-detail"]
        # What a commit would add to /metrics, and what the rollout API reads back as evidence.
        steps.commit(batch)
        generate_latest(consumer.metrics.registry)
        evidence = await consumer.store.query_dicts(
            f"SELECT {', '.join(EVIDENCE_COLUMN_NAMES)} FROM {{db}}.evidence "
            "WHERE report_id IN {ids:Array(String)}",
            {"ids": batch.ids()},
        )
        for row in evidence:
            describe(row, consumer.classifier.roots)


async def test_a_defect_a_record_exposes_is_dead_lettered_and_the_rest_goes_on(
    steps: HandDriven, material: Material, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only the failures foreseen: any exception classifying a record dead-letters it."""
    consumer = steps.consumer
    classify = consumer.classifier.classify_fields

    def broken_for_one_host(host: str, *args: Any) -> Any:
        if host == "bug.pinwatch.test":
            raise RuntimeError("a defect of ours")
        return classify(host, *args)

    monkeypatch.setattr(consumer.classifier, "classify_fields", broken_for_one_host)
    offset = next(OFFSETS)
    good, bad = material.base("rotated", f"{offset}-0"), material.base("rotated", f"{offset}-1")
    bad["host"] = "bug.pinwatch.test"
    steps.dead.clear()
    steps.discard()
    value = json.dumps({"v": 1, "records": [bad, good]}).encode()
    await steps.handle(consumer.settings.kafka_topic, 0, KafkaMessage(offset, value))
    assert steps.batch.ids() == [good["id"]]
    ((_, headers),) = steps.dead
    assert headers["pinwatch-reason"] == b"unclassifiable_record"
    assert headers["pinwatch-detail"] == b"RuntimeError: a defect of ours"
    await steps.write()


# --- the same, through a real broker -----------------------------------------------------------


async def test_a_record_with_an_unusable_key_is_dead_lettered_and_the_rest_is_stored(
    make_settings: Callable[..., Settings], ca: CertificateAuthority
) -> None:
    settings = make_settings(batch_max_seconds=0.2)
    leaf, *rest = ca.chain("rotated").der
    poisoned = [base64.b64encode(with_key_oid(leaf, 0x09)).decode(), *ca.chain("rotated").b64[1:]]
    assert rest, "a chain of several certificates"

    def record(**overrides: Any) -> Any:
        values = dict(enforced=True, served_chain=ca.chain("rotated").b64)
        return kafka_record(app_id=TEST_APP, host=TEST_HOST, **{**values, **overrides})

    before, bad, beside = record(), record(served_chain=poisoned), record()
    after = [record() for _ in range(3)]
    async with run_pipeline(settings, ingest=False) as p:
        # As an ingest before the fix put it there: one message, good records around it.
        await produce(settings, [encode_batch([before, bad, beside])])
        await produce(settings, [encode_batch([r]) for r in after])
        await p.wait_inserted(5)
        assert p.consumer is not None and p.consumer.fatal is None
        ids = {row[0] for row in await p.store.query("SELECT id FROM {db}.reports")}
        assert ids == {r.id for r in (before, beside, *after)}
        dead = await read_topic(settings, settings.kafka_dead_letter_topic, 1)
        assert len(dead) == 1
        headers = dict(dead[0].headers)
        assert headers["pinwatch-reason"] == b"unclassifiable_record"
        assert b"served_chain[0]" in headers["pinwatch-detail"]
        assert b"usable public key" in headers["pinwatch-detail"]
        assert headers["pinwatch-record-index"] == b"1"
        assert [r.id for r in decode_batch(dead[0].value)] == [bad.id]  # replayable as is
        assert await p.metric("pinwatch_consumer_inserted_reports_total") == 5
        assert (
            await p.metric("pinwatch_consumer_dead_lettered_total", reason="unclassifiable_record")
            == 1
        )
