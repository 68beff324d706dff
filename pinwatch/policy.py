"""The pin policy: which apps may report (and with which ingest keys), and per host the pin set,
subdomain coverage and rollout phase.

Loaded once at start and validated whole; any problem raises `PolicyError` naming the file and
line, so a bad policy never starts a half-configured service.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Phase(StrEnum):
    REPORT_ONLY = "report_only"
    ENFORCE = "enforce"


class PinRole(StrEnum):
    PRIMARY = "primary"
    BACKUP = "backup"


class PinMatch(StrEnum):
    PRIMARY = "primary"
    BACKUP = "backup"
    NONE = "none"


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

    @field_validator("ingest_keys")
    @classmethod
    def _long_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if len(key) < 16:
                raise ValueError("ingest keys must be at least 16 characters")
        return keys


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

    def match(self, pins: list[str]) -> PinMatch:
        """Best role among the observed pins: any primary beats any backup beats none."""
        roles = {pin.sha256: pin.role for pin in self.pins}
        found = {roles[p] for p in pins if p in roles}
        if PinRole.PRIMARY in found:
            return PinMatch.PRIMARY
        if PinRole.BACKUP in found:
            return PinMatch.BACKUP
        return PinMatch.NONE


class PolicyDocument(_Model):
    apps: list[App] = Field(min_length=1)
    hosts: list[HostPolicy] = Field(default_factory=list)


_MAX_HOST_NAME = 253  # the longest DNS name (RFC 1035), without the final dot


class PolicyError(ValueError):
    pass


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

    @property
    def app_ids(self) -> list[str]:
        return [app.id for app in self.document.apps]

    @property
    def hosts(self) -> list[HostPolicy]:
        return list(self.document.hosts)


def _line_of(root: yaml.Node, loc: tuple[Any, ...]) -> int | None:
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
        raise PolicyError(f"{source}: not valid YAML: {exc}") from exc
    if root is None or not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping with `apps` and `hosts`")
    try:
        document = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not isinstance(p, str) or p in _known_keys(err))
            line = _line_of(root, loc)
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"{source}:{line}: {where}: {err['msg']}")
        raise PolicyError("invalid pin policy\n" + "\n".join(problems)) from None
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
