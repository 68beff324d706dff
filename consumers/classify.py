"""What a report means against the pin policy: observed pins, pin match, enforcement, cause.

One `Classifier` per consumer. Certificate parsing is the expensive part and the same few chains
arrive over and over (one per server key and CDN edge), so chain facts are cached per chain.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from consumers.decode import WireRecord
from pinwatch.pins import spki_pin
from pinwatch.policy import HostPolicy, Policy
from pinwatch.record import Record
from pinwatch.roots import PublicRoots
from pinwatch.vocabulary import Cause, Kind, Phase, Result


class ClassifyError(ValueError):
    """The record cannot be classified (e.g. its chain is not DER certificates): dead-letter."""


# What a client's certificate can make `cryptography` raise: bytes that are not DER
# (ValueError), a key of an algorithm it does not know (UnsupportedAlgorithm: an EC key whose
# OID was altered), a key it refuses (ValueError "Invalid key": an EC point off its curve).
BAD_CERTIFICATE = (ValueError, TypeError, UnsupportedAlgorithm)


@dataclass(frozen=True, slots=True)
class ChainFacts:
    pins: tuple[str, ...]  # SPKI pins, leaf first
    public_root: bool


@dataclass(frozen=True, slots=True)
class Classification:
    policy_host: str  # '' when no policy entry covers the host
    observed_pins: list[str]
    client_pins_consistent: bool
    pin_match: str  # primary | backup | none (pins seen, none pinned) | '' (no policy or no pins)
    enforced: bool
    phase: str  # enforce | report_only | ''
    cause: str  # rotation_suspected | interception_suspected | unknown | ''
    public_root: bool
    has_chain: bool
    leaf_pin: str  # observed_pins[0], '' without pins


_CHAIN_CACHE_SIZE = 4096


class Classifier:
    def __init__(self, policy: Policy, roots: PublicRoots) -> None:
        self.policy = policy
        self.roots = roots
        # A chain's facts, or why it has none (see chain_facts).
        self._chains: OrderedDict[tuple[str, ...], ChainFacts | str] = OrderedDict()
        self._hosts: dict[str, HostPolicy | None] = {}

    def host_policy(self, host: str) -> HostPolicy | None:
        try:
            return self._hosts[host]
        except KeyError:
            found = self.policy.host(host)
            if len(self._hosts) > 65_536:  # hosts come from clients: keep the memo bounded
                self._hosts.clear()
            self._hosts[host] = found
            return found

    def chain_facts(self, chain: list[str]) -> ChainFacts:
        """Pins and root of a served chain; raises ClassifyError when a certificate is not one
        with a usable public key (the verdict is cached like facts: a client repeating a broken
        chain costs one parse, not one per report)."""
        key = tuple(chain)
        facts = self._chains.get(key)
        if facts is None:
            facts = self._read_chain(chain)
            self._chains[key] = facts
            if len(self._chains) > _CHAIN_CACHE_SIZE:
                self._chains.popitem(last=False)
        else:
            self._chains.move_to_end(key)
        if isinstance(facts, str):
            raise ClassifyError(facts)
        return facts

    def _read_chain(self, chain: list[str]) -> ChainFacts | str:
        """The chain's facts, or why it has none."""
        try:
            certs, pins = [], []
            for i, b64 in enumerate(chain):
                try:
                    der = base64.b64decode(b64, validate=True)
                except (binascii.Error, ValueError):
                    return f"served_chain[{i}] is not base64"
                try:
                    cert = x509.load_der_x509_certificate(der)
                except BAD_CERTIFICATE as exc:
                    return f"served_chain[{i}] is not a DER certificate: {exc}"
                try:
                    pins.append(spki_pin(cert))
                except BAD_CERTIFICATE as exc:
                    # Ingest answers 400 to these now; records it accepted before still come.
                    return (
                        f"served_chain[{i}] is not an X.509 certificate with a usable public "
                        f"key: {exc}"
                    )
                certs.append(cert)
            return ChainFacts(pins=tuple(pins), public_root=self.roots.ends_in_public_root(certs))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001
            # Whatever else a hostile certificate makes the parser raise, a Rust panic included
            # (pyo3's PanicException is a BaseException): the record is dead-lettered with the
            # reason, the consumer goes on.
            return f"served_chain cannot be read: {type(exc).__name__}: {exc}"

    def classify(self, record: Record) -> Classification:
        """Classify a `Record` (tests, tools); the consumer calls `classify_fields`."""
        return self.classify_fields(
            record.host,
            record.kind.value,
            record.result.value if record.result is not None else None,
            record.enforced,
            record.served_chain,
            record.observed_pins,
        )

    def classify_fields(
        self,
        host: str,
        kind: str,
        result: str | None,
        enforced: bool | None,
        served_chain: Sequence[str],
        client_pins: Sequence[str],
    ) -> Classification:
        """A classification depends only on these fields (the consumer caches it per
        combination, see consumers.steps.Enricher)."""
        hp = self.host_policy(host)
        phase = hp.phase.value if hp is not None else ""
        if kind != Kind.PIN_VALIDATION.value:
            return Classification(
                policy_host=hp.host if hp is not None else "",
                observed_pins=[],
                client_pins_consistent=True,
                pin_match="",
                enforced=False,
                phase=phase,
                cause="",
                public_root=False,
                has_chain=False,
                leaf_pin="",
            )
        if served_chain:
            facts = self.chain_facts(list(served_chain))
            observed = list(facts.pins)
            public_root = facts.public_root
            # The chain is the evidence; the client's own pin list is checked against it (a
            # client bug or a tampered report shows up as an inconsistent leaf pin).
            consistent = not client_pins or client_pins[0] == observed[0]
        else:
            observed, public_root, consistent = list(client_pins), False, True
        # `none` is "pins were seen and none is pinned"; a report without any pins (NEL sends
        # no keys) says nothing about them, so it matches nothing: ''.
        pin_match = hp.match(observed).value if hp is not None and observed else ""
        if enforced is None:
            enforced = hp is not None and hp.phase is Phase.ENFORCE
        if result == Result.OK.value:
            cause = ""
        elif not served_chain:
            cause = Cause.UNKNOWN
        else:
            cause = Cause.ROTATION if public_root else Cause.INTERCEPTION
        return Classification(
            policy_host=hp.host if hp is not None else "",
            observed_pins=observed,
            client_pins_consistent=consistent,
            pin_match=pin_match,
            enforced=enforced,
            phase=phase,
            cause=cause,
            public_root=public_root,
            has_chain=bool(served_chain),
            leaf_pin=observed[0] if observed else "",
        )


def report_columns(
    records: list[WireRecord],
    classes: list[Classification],
    origins: list[tuple[str, int, int]],
) -> list[list[Any]]:
    """The `reports` columns (consumers.schema.REPORT_COLUMN_NAMES order) of decoded records
    (consumers.decode.WireRecord), their classifications and their Kafka (topic, partition,
    offset). Built column by column for clickhouse-connect's column-oriented insert: no row
    tuple per report, no transposition. Times stay integer milliseconds: DateTime64(3) takes raw
    ticks, which spares a datetime object per row."""
    rs, cs = records, classes
    return [
        [r.id for r in rs],
        [r.received_at_ms for r in rs],
        [r.event_at_ms for r in rs],
        [r.sent_at_ms for r in rs],
        [r.app_id for r in rs],
        [r.app_version for r in rs],
        [r.platform for r in rs],
        [r.os_version for r in rs],
        [r.device for r in rs],
        [r.network for r in rs],
        [r.client_network for r in rs],
        [r.host for r in rs],
        [c.policy_host for c in cs],
        [r.port for r in rs],
        [r.kind for r in rs],
        [r.format for r in rs],
        [r.result or "" for r in rs],
        [c.pin_match for c in cs],
        [1 if c.enforced else 0 for c in cs],
        [c.phase for c in cs],
        [c.cause for c in cs],
        [c.observed_pins for c in cs],
        [r.observed_pins for r in rs],
        [1 if c.client_pins_consistent else 0 for c in cs],
        [c.leaf_pin for c in cs],
        [1 if c.public_root else 0 for c in cs],
        [r.error or "" for r in rs],
        [r.detail for r in rs],
        [r.count for r in rs],
        [o[0] for o in origins],
        [o[1] for o in origins],
        [o[2] for o in origins],
    ]
