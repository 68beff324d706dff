"""What each certificate of a chain is to a host's pin policy: its place in the chain, its SPKI
pin and that pin's role (primary, backup, not pinned, and any candidate set holding it). Shared
by `pinwatch pins`, `pins lint --probe` and the prober's log lines."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from pinwatch.pins import spki_pin
from pinwatch.policy import HostPolicy, Policy
from pinwatch.roots import PublicRoots

NOT_PINNED = "not pinned"


@dataclass(frozen=True)
class PinLine:
    index: int
    position: str  # leaf, intermediate, root
    served: bool  # False: a root the server left out, found in the public roots bundle
    subject: str
    not_after: str
    pin: str
    role: str  # primary, backup, not pinned (or "" without a policy for the host)
    label: str = ""
    candidate_sets: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names a certificate is for: its common name and SAN DNS names, lowercase."""
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names += san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    return sorted({n.strip().lower().rstrip(".") for n in names if n.strip()})


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not self-signed"
        return False


def with_root(
    certs: list[x509.Certificate], roots: PublicRoots | None
) -> tuple[list[x509.Certificate], bool]:
    """The chain up to its root: servers usually leave the root out, so when the last
    certificate is not self-signed and a bundle root signed it, that root is appended.
    Returns the chain and whether a root was added."""
    if not certs or roots is None or _self_signed(certs[-1]):
        return list(certs), False
    root = roots.issuer_of(certs[-1])
    return (list(certs) + [root], True) if root is not None else (list(certs), False)


def describe(
    certs: list[x509.Certificate], host: HostPolicy | None, *, served: int | None = None
) -> list[PinLine]:
    """One line per certificate, leaf first. `served`: how many of `certs` the server sent
    (the rest came from the trust store)."""
    served = len(certs) if served is None else served
    lines = []
    for i, cert in enumerate(certs):
        pin = spki_pin(cert)
        if i == 0:
            position = "leaf"
        elif i == len(certs) - 1 and _self_signed(cert):
            position = "root"
        else:
            position = "intermediate"
        role, label, candidates = "", "", []
        if host is not None:
            found = next((p for p in host.pins if p.sha256 == pin), None)
            role = str(found.role) if found is not None else NOT_PINNED
            label = found.label if found is not None else ""
            candidates = host.candidate_sets_with(pin)
        lines.append(
            PinLine(
                index=i,
                position=position,
                served=i < served,
                subject=common_name(cert),
                not_after=cert.not_valid_after_utc.strftime("%Y-%m-%d"),
                pin=pin,
                role=role,
                label=label,
                candidate_sets=candidates,
            )
        )
    return lines


def policy_host_for(
    policy: Policy | None, name: str | None, certs: list[x509.Certificate]
) -> HostPolicy | None:
    """The policy host for a name given by the user, else for the leaf's own names."""
    if policy is None:
        return None
    if name:
        return policy.host(name)
    for cert_name in certificate_names(certs[0]) if certs else []:
        hosts = policy.hosts_for_certificate_name(cert_name)
        if hosts:
            return hosts[0]
    return None


def days_left(cert: x509.Certificate, now: dt.datetime | None = None) -> float:
    now = now or dt.datetime.now(dt.UTC)
    return (cert.not_valid_after_utc - now).total_seconds() / 86400
