"""A rollout question, validated: host, window, filters and the candidate pin set.

Everything a caller can get wrong raises `RolloutRequestError` with a message naming the field,
so the API answers 400 (or 404 for an unknown host) and the CLI prints it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from pinwatch.policy import HostPolicy, Policy, is_spki_pin
from pinwatch.vocabulary import PLATFORMS, PinRole

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
CURRENT_PIN_SET = "current"
# The first time ClickHouse's DateTime64 holds (the engine refused an earlier `since`: 503).
ENGINE_FIRST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)


class RolloutRequestError(ValueError):
    """A question the API cannot answer as asked; `status` is the HTTP status to answer with,
    `field` the parameter at fault (None when it is the combination)."""

    def __init__(self, message: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def _since_error(message: str) -> RolloutRequestError:
    return RolloutRequestError(f"since: {message}", field="since")


def parse_since(value: str, now: dt.datetime | None = None, max_days: int = 30) -> dt.datetime:
    """`30m`, `24h`, `7d`, `2w` back from now (a window of at most `max_days`, the raw
    retention: older reports are not kept), or an ISO 8601 instant (UTC when no zone) within
    ClickHouse's DateTime64 range and not in the future."""
    now = now or dt.datetime.now(dt.UTC)
    text = value.strip()
    match = _DURATION.match(text)
    if match:
        digits, unit = match.group(1).lstrip("0"), match.group(2)
        longest = max_days * 86400 // _UNIT_SECONDS[unit]
        # Compared as digits first: int() refuses thousands of them.
        if len(digits) > len(str(longest)) or int(digits or 0) > longest:
            raise _since_error(
                f"a window of at most {longest}{unit} ({max_days} days, retention_days: older "
                "reports are not kept)"
            )
        seconds = int(digits or 0) * _UNIT_SECONDS[unit]
        if seconds <= 0:
            raise _since_error("the duration must be positive")
        return now - dt.timedelta(seconds=seconds)
    try:
        since = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        since = since.astimezone(dt.UTC)
    except (ValueError, OverflowError):  # not a time; a year 1 or 9999 shifted by its zone
        raise _since_error(
            f"{value[:64]!r} is neither a duration (30m, 24h, 7d) nor an ISO 8601 time "
            f"between {ENGINE_FIRST:%Y-%m-%d} and now"
        ) from None
    if since >= now:
        raise _since_error(f"{value[:64]!r} is not in the past")
    if since < ENGINE_FIRST:
        raise _since_error(f"{value[:64]!r} is before {ENGINE_FIRST:%Y-%m-%d} (ClickHouse's range)")
    return since


@dataclass(frozen=True)
class CandidatePin:
    sha256: str
    role: str  # primary | backup
    label: str = ""


@dataclass(frozen=True)
class PinSet:
    name: str  # "current", a policy candidate set name, or "custom" for pins given by hand
    pins: tuple[CandidatePin, ...]

    @property
    def hashes(self) -> list[str]:
        return [p.sha256 for p in self.pins]

    def role_of(self, pins: list[str]) -> str:
        """Best role among `pins` (a chain's pins): primary beats backup beats none."""
        roles = {p.role for p in self.pins if p.sha256 in pins}
        for role in ("primary", "backup"):
            if role in roles:
                return role
        return "none"


@dataclass(frozen=True)
class RolloutRequest:
    host: str
    since: dt.datetime
    until: dt.datetime
    pin_set: PinSet
    app: str | None = None
    app_version: str | None = None
    platform: str | None = None
    filters: dict[str, str] = field(default_factory=dict)


def _pins_by_hand(values: list[str]) -> PinSet:
    """`pin=ROLE:HASH` or `pin=HASH`; without a role the first is primary, the rest backups."""
    pins = []
    for i, value in enumerate(values):
        role, sep, digest = value.strip().partition(":")
        if not sep:
            role, digest = ("primary" if i == 0 else "backup"), value.strip()
        if role not in (PinRole.PRIMARY, PinRole.BACKUP):
            raise RolloutRequestError(
                f"pin: role {role[:64]!r} must be primary or backup", field="pin"
            )
        if not is_spki_pin(digest):
            raise RolloutRequestError(
                f"pin: {digest[:64]!r} is not a base64 SHA-256 SPKI pin (32 bytes once decoded)",
                field="pin",
            )
        pins.append(CandidatePin(digest, role))
    return PinSet("custom", tuple(pins))


def _from_policy(name: str, pins: list) -> PinSet:
    return PinSet(name, tuple(CandidatePin(p.sha256, str(p.role), p.label) for p in pins))


def resolve_pin_set(
    host_policy: HostPolicy | None, host: str, pins: list[str], pin_set: str | None
) -> PinSet:
    if pins and pin_set:
        raise RolloutRequestError("give either pin= or pin_set=, not both")
    if pins:
        return _pins_by_hand(pins)
    if host_policy is None:
        raise RolloutRequestError(
            f"host {host!r} is not in the pin policy: name candidate pins with pin=",
            status=404,
            field="host",
        )
    if pin_set in (None, "", CURRENT_PIN_SET):
        return _from_policy(CURRENT_PIN_SET, host_policy.pins)
    candidates = host_policy.candidate_pin_sets
    if pin_set not in candidates:
        known = ", ".join([CURRENT_PIN_SET, *sorted(candidates)])
        raise RolloutRequestError(
            f"pin_set: {pin_set[:64]!r} is not a pin set of {host}: {known}", field="pin_set"
        )
    return _from_policy(pin_set, candidates[pin_set])


def build_request(
    policy: Policy,
    host: str,
    *,
    since: str,
    pins: list[str] | None = None,
    pin_set: str | None = None,
    app: str | None = None,
    app_version: str | None = None,
    platform: str | None = None,
    now: dt.datetime | None = None,
    max_days: int = 30,
) -> RolloutRequest:
    now = now or dt.datetime.now(dt.UTC)
    name = host.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not name.isprintable() or " " in name:
        raise RolloutRequestError(
            "host: must be a host name (1 to 253 characters, no space or control character)",
            field="host",
        )
    if platform and platform not in PLATFORMS:
        raise RolloutRequestError(
            f"platform: {platform[:64]!r} is none of {', '.join(sorted(PLATFORMS))}",
            field="platform",
        )
    host_policy = policy.host(name)
    filters = {
        k: v for k, v in (("app", app), ("app_version", app_version), ("platform", platform)) if v
    }
    return RolloutRequest(
        host=name,
        since=parse_since(since, now, max_days),
        until=now,
        pin_set=resolve_pin_set(host_policy, name, pins or [], pin_set),
        app=app or None,
        app_version=app_version or None,
        platform=platform or None,
        filters=filters,
    )
