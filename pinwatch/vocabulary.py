"""The words every part of pinwatch shares, defined once: what a report is, how a validation came
out, why it failed, which platform sent it, what the pin policy says, and what "would fail"
means during a report-only rollout. The wire record, the policy, the consumer's labels, the alert
rules, the dashboards and the rollout analysis all read them from here.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    PIN_VALIDATION = "pin_validation"
    NETWORK_ERROR = "network_error"


class Result(StrEnum):
    """Outcome of a pin validation as the client saw it."""

    OK = "ok"
    PIN_MISMATCH = "pin_mismatch"  # chain valid, no pin matched
    CHAIN_INVALID = "chain_invalid"  # system trust failed before pins were checked


class ErrorCategory(StrEnum):
    DNS = "dns"
    TCP = "tcp"
    TLS = "tls"
    HTTP = "http"
    TIMEOUT = "timeout"
    OTHER = "other"


class Format(StrEnum):
    """How a report arrived (the ingest route, and the `format` column and label)."""

    NATIVE = "native"
    TRUSTKIT = "trustkit"
    HPKP = "hpkp"
    NEL = "nel"


class Phase(StrEnum):
    """A host's rollout phase in the pin policy."""

    REPORT_ONLY = "report_only"
    ENFORCE = "enforce"


class PinRole(StrEnum):
    PRIMARY = "primary"
    BACKUP = "backup"


class PinMatch(StrEnum):
    """Best role among a report's observed pins. `none`: pins were seen and none is pinned; a
    report without pins (NEL) matches nothing and carries '' (labels: `unknown`)."""

    PRIMARY = "primary"
    BACKUP = "backup"
    NONE = "none"


class Cause(StrEnum):
    """Why a pin validation failed, inferred from the served chain (consumers/classify.py)."""

    ROTATION = "rotation_suspected"  # a publicly trusted chain with unpinned keys: page
    INTERCEPTION = "interception_suspected"  # a private root (TLS-inspecting proxy): ticket
    UNKNOWN = "unknown"  # a failure that carries no chain to judge


# Label value every bounded label folds into: an app or host outside the policy, a platform
# outside PLATFORMS, an app version outside the most recent few.
OTHER = "other"

PLATFORMS = frozenset({"ios", "android", "tvos", "watchos", "macos", "web", OTHER})


def platform_label(platform: str) -> str:
    """A client's platform as pinwatch records it: lower case, unknown ones `other`, '' kept
    (the client did not say)."""
    name = platform.lower()
    return name if not name or name in PLATFORMS else OTHER


# "Would fail" during report-only rollout: a report-only validation decided by pins (not by a
# broken chain) that saw no pinned key, interception left out (enforcement is meant to fail
# there, and it is the proxy's problem, not the pin set's). `pinwatch rollout`, the Rollout
# dashboard and the report-only alert all use this one definition.
def would_fail_promql() -> str:
    """Label matchers of `pinwatch_pin_validations_total` selecting would-fail validations."""
    return f'enforced="false",pin_match="{PinMatch.NONE}",cause!="{Cause.INTERCEPTION}"'


def would_fail_sql(pin_match_fails: str = f"pin_match = '{PinMatch.NONE}'") -> str:
    """The SQL condition, on `reports` or its rollups, of a would-fail row among report-only
    pin validations; `pin_match_fails` replaces the policy's own verdict when a candidate pin set
    is judged instead."""
    return f"{pin_match_fails} AND cause != '{Cause.INTERCEPTION}'"


def intercepted_sql(pin_match_fails: str = f"pin_match = '{PinMatch.NONE}'") -> str:
    """The SQL condition of a row that fails because of interception (counted apart)."""
    return f"{pin_match_fails} AND cause = '{Cause.INTERCEPTION}'"


# Pin validations whose outcome the pins decided (chain_invalid failed before pins were read).
DECIDED_BY_PINS_SQL = f"result IN ('{Result.OK}', '{Result.PIN_MISMATCH}')"


# Staged enforcement: devices that enforce a host and devices that only report it (their
# `enforced` flag, drawn by pinwatch/cohort.py) meet the same servers, so their shares of pin
# mismatches should match. Compared among validations the pins decided, interception left out
# (enforcement is meant to refuse a proxy): the Rollout dashboard, `pinwatch rollout` and the
# PinwatchEnforcedCohortFailing alert all use these.
COHORT_MISMATCH_SQL = f"result = '{Result.PIN_MISMATCH}' AND cause != '{Cause.INTERCEPTION}'"


def cohort_promql() -> tuple[str, str]:
    """Label matchers of `pinwatch_pin_validations_total`: (validations the pins decided,
    mismatches among them that count against a cohort)."""
    decided = f'result=~"{Result.OK}|{Result.PIN_MISMATCH}"'
    return decided, f'result="{Result.PIN_MISMATCH}",cause!="{Cause.INTERCEPTION}"'
