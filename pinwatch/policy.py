"""The pin policy: which apps may report (and with which ingest keys), and per host the pin set,
subdomain coverage and rollout phase.

Loaded once at start and validated whole; any problem raises `PolicyError` naming the file and
line, so a bad policy never starts a half-configured service.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pinwatch.vocabulary import Phase, PinMatch, PinRole


def is_spki_pin(value: str) -> bool:
    """A pin is the base64 of a SHA-256 digest: exactly 32 bytes once decoded."""
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pin(_Model):
    sha256: str
    role: PinRole
    label: str = ""

    @field_validator("sha256")
    @classmethod
    def _is_pin(cls, value: str) -> str:
        if not is_spki_pin(value):
            raise ValueError("must be the base64 SHA-256 of a SubjectPublicKeyInfo (32 bytes)")
        return value


class App(_Model):
    id: str = Field(min_length=1)
    ingest_keys: list[str] = Field(min_length=1)
    # Where the app sends its pin reports (TrustKit's report URI): `pinwatch pins lint` checks
    # that the policy does not pin it, since a pinned report endpoint cannot report its breakage.
    report_url: str = ""
    # Served in the app's signed policy document (pinwatch/livepolicy.py): the share of
    # successful validations clients report (failures always are), and the salt of the staged
    # enforcement cohorts (pinwatch/cohort.py; empty: the app id). A new salt reshuffles cohorts.
    report_success_fraction: float = Field(1.0, gt=0, le=1)
    cohort_salt: str = Field("", max_length=128)

    @field_validator("report_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not report_url_host(value):
            raise ValueError("must be an http(s) URL with a host, e.g. https://pins.acme.com/r")
        return value

    @property
    def report_host(self) -> str | None:
        return report_url_host(self.report_url) if self.report_url else None

    @field_validator("ingest_keys")
    @classmethod
    def _long_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if len(key) < 16:
                raise ValueError("ingest keys must be at least 16 characters")
        return keys


def match_pins(pin_set: list[Pin], observed: list[str]) -> PinMatch:
    """Best role of `pin_set` among the observed pins: any primary beats any backup beats
    none."""
    roles = {pin.sha256: pin.role for pin in pin_set}
    found = {roles[p] for p in observed if p in roles}
    if PinRole.PRIMARY in found:
        return PinMatch.PRIMARY
    if PinRole.BACKUP in found:
        return PinMatch.BACKUP
    return PinMatch.NONE


class HostPolicy(_Model):
    host: str = Field(min_length=1)
    include_subdomains: bool = False
    phase: Phase = Phase.REPORT_ONLY
    port: int = 443
    pins: list[Pin] = Field(min_length=1)
    # Extra named pin sets a rollout can evaluate ("what if we enforced this one?").
    candidate_pin_sets: dict[str, list[Pin]] = Field(default_factory=dict)

    @field_validator("host")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower().rstrip(".")

    @model_validator(mode="after")
    def _needs_backup(self) -> HostPolicy:
        roles = {pin.role for pin in self.pins}
        if PinRole.PRIMARY not in roles or PinRole.BACKUP not in roles:
            raise ValueError("a pin set needs at least one primary and one backup pin")
        return self

    def role_of(self, pin: str) -> PinRole | None:
        """The pin's role in this host's pin set, None when the host does not pin it."""
        return next((p.role for p in self.pins if p.sha256 == pin), None)

    def candidate_sets_with(self, pin: str) -> list[str]:
        return [
            name
            for name, pins in self.candidate_pin_sets.items()
            if any(p.sha256 == pin for p in pins)
        ]

    def match(self, pins: list[str]) -> PinMatch:
        """Best role among the observed pins: any primary beats any backup beats none."""
        return match_pins(self.pins, pins)


class PolicyDocument(_Model):
    apps: list[App] = Field(min_length=1)
    hosts: list[HostPolicy] = Field(default_factory=list)


def report_url_host(url: str) -> str | None:
    parsed = urlsplit(url.strip())
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        return None
    return parsed.hostname.lower().rstrip(".")


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy file, at a line when it can be placed."""

    line: int | None
    where: str  # the field path, e.g. hosts.0.pins.1.sha256
    message: str


_MAX_HOST_NAME = 253  # the longest DNS name (RFC 1035), without the final dot


class PolicyError(ValueError):
    def __init__(self, message: str, problems: list[PolicyProblem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


@dataclass(frozen=True)
class Policy:
    document: PolicyDocument
    source: str = "<memory>"

    def __post_init__(self) -> None:
        keys: dict[str, str] = {}
        for app in self.document.apps:
            for key in app.ingest_keys:
                if key in keys and keys[key] != app.id:
                    raise PolicyError(
                        f"{self.source}: ingest key shared by {keys[key]} and {app.id}"
                    )
                keys[key] = app.id
        object.__setattr__(self, "_apps_by_key", keys)
        object.__setattr__(self, "_hosts", {h.host: h for h in self.document.hosts})

    def app_for_key(self, key: str | None) -> str | None:
        if not key:
            return None
        return self._apps_by_key.get(key)  # type: ignore[attr-defined]

    def host(self, hostname: str) -> HostPolicy | None:
        """The policy covering `hostname`: exact, else the nearest parent with subdomains."""
        name = hostname.strip().lower().rstrip(".")
        if len(name) > _MAX_HOST_NAME:  # not a DNS name; and the parent walk below is quadratic
            return None
        hosts: dict[str, HostPolicy] = self._hosts  # type: ignore[attr-defined]
        exact = hosts.get(name)
        if exact is not None:
            return exact
        labels = name.split(".")
        for i in range(1, len(labels) - 1):
            parent = hosts.get(".".join(labels[i:]))
            if parent is not None and parent.include_subdomains:
                return parent
        return None

    def hosts_for_certificate_name(self, name: str) -> list[HostPolicy]:
        """Policy hosts a certificate issued for DNS name `name` (CN or SAN) can serve: the
        name's own policy (exact or a parent with include_subdomains) and, for a wildcard
        `*.acme.com`, every host one label below acme.com plus acme.com itself when it covers
        its subdomains."""
        name = name.strip().lower().rstrip(".")
        if not name.startswith("*."):
            host = self.host(name)
            return [host] if host is not None else []
        parent = name[2:]
        found = [
            h for h in self.document.hosts if h.host.partition(".")[2] == parent and "." in h.host
        ]
        hosts: dict[str, HostPolicy] = self._hosts  # type: ignore[attr-defined]
        labels = parent.split(".")
        for i in range(len(labels) - 1):  # parent and its ancestors, nearest first
            ancestor = hosts.get(".".join(labels[i:]))
            if ancestor is not None and ancestor.include_subdomains:
                if ancestor not in found:
                    found.append(ancestor)
                break
        return found

    @property
    def app_ids(self) -> list[str]:
        return [app.id for app in self.document.apps]

    @property
    def hosts(self) -> list[HostPolicy]:
        return list(self.document.hosts)


def line_of(root: yaml.Node, loc: tuple[Any, ...]) -> int | None:
    """Walk the composed YAML node tree along a pydantic error location to find its line."""
    node: yaml.Node | None = root
    line = root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == part), None)
            key = next((k for k, v in node.value if k.value == part), None)
            if key is not None:
                line = key.start_mark.line + 1
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
            if node is not None:
                line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


def parse_policy(text: str, source: str = "<memory>") -> Policy:
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = PolicyProblem(line, "", f"not valid YAML: {exc}")
        raise PolicyError(f"{source}: not valid YAML: {exc}", [problem]) from exc
    if root is None or not isinstance(data, dict):
        message = "expected a mapping with `apps` and `hosts`"
        raise PolicyError(f"{source}: {message}", [PolicyProblem(1, "", message)])
    try:
        document = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not isinstance(p, str) or p in _known_keys(err))
            where = ".".join(str(p) for p in err["loc"])
            problems.append(PolicyProblem(line_of(root, loc), where, err["msg"]))
        lines = [f"{source}:{p.line}: {p.where}: {p.message}" for p in problems]
        raise PolicyError("invalid pin policy\n" + "\n".join(lines), problems) from None
    return Policy(document=document, source=source)


def _known_keys(err: Any) -> set[str]:
    # pydantic puts validator names (e.g. "function-after[...]") into locations of model errors;
    # only real field names lead somewhere in the YAML tree.
    return {p for p in err["loc"] if isinstance(p, str) and "[" not in p}


def load_policy(path: Path | str) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read pin policy {path}: {exc.strerror}") from exc
    return parse_policy(text, source=str(path))
