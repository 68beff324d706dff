"""The live side of the pin policy: what the levers change while pinwatch runs (each host's
phase and enforcement percentage, kill switches per app or per app and host), the changes
themselves with their validation, and the document every app is served.

The policy file stays the source of apps, hosts and pins. `LiveState` holds only what levers
set on top of it, plus a `version` that grows with every change (a lever, or the owner adopting
a different policy file). The owner of the state (the consumer process, which owns ClickHouse:
consumers/policy/) applies `apply_change` and records each new state as one audit row; the ingest
edge signs `document_claims` for each app (ingest/policy.py). Both read the words from here.

A host's phase and percentage: the lever's if one was set, else the file's phase at 100 % (the
file's `enforce` has always meant every device enforces). A killed app or host is served with
`kill_switch: true`: its clients stop enforcing and keep reporting (report-only), so the pages
clear while pinwatch still sees what the servers present.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import orjson

from pinwatch.cohort import FUNCTION as COHORT_FUNCTION
from pinwatch.policy import Policy
from pinwatch.vocabulary import Phase

Action = Literal["set_phase", "kill", "unkill", "policy_file"]
LEVERS: tuple[str, ...] = ("set_phase", "kill", "unkill")
MAX_REASON = 1000
MAX_ACTOR = 200


class ChangeError(ValueError):
    """A change refused: `status` 400 (a bad value), 404 (unknown app or host) or 409 (it
    changes nothing, or conflicts); `field` names the offending input."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass(frozen=True)
class HostSetting:
    phase: Phase
    percent: float  # of devices enforcing, 0..100; 0 for report_only


@dataclass(frozen=True)
class Kill:
    app: str
    host: str  # "" : every host of the app
    reason: str
    actor: str
    at: str  # ISO 8601, UTC

    @property
    def scope(self) -> str:
        return f"{self.app} on {self.host}" if self.host else f"{self.app} (every host)"


@dataclass(frozen=True)
class LiveState:
    version: int = 0  # 0: nothing recorded yet
    changed_at: str = ""
    policy_sha256: str = ""  # the policy file this state was computed against
    hosts: dict[str, HostSetting] = field(default_factory=dict)  # set by `set-phase`
    kills: tuple[Kill, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LiveState:
        return cls(
            version=int(data.get("version", 0)),
            changed_at=str(data.get("changed_at", "")),
            policy_sha256=str(data.get("policy_sha256", "")),
            hosts={
                h: HostSetting(Phase(s["phase"]), float(s["percent"]))
                for h, s in (data.get("hosts") or {}).items()
            },
            kills=tuple(Kill(**k) for k in data.get("kills") or ()),
        )

    @classmethod
    def from_json(cls, text: str) -> LiveState:
        return cls.from_dict(orjson.loads(text))

    def killed(self, app: str, host: str = "") -> Kill | None:
        return next((k for k in self.kills if k.app == app and k.host == host), None)


@dataclass(frozen=True)
class Change:
    """One lever pulled: `set_phase` (host, phase, percent), `kill` or `unkill` (app, host)."""

    action: str
    actor: str
    reason: str = ""
    app: str = ""
    host: str = ""
    phase: str = ""
    percent: float | None = None


@dataclass(frozen=True)
class Applied:
    """A change as the audit keeps it: the new state and what moved (before -> after)."""

    state: LiveState
    action: str
    actor: str
    reason: str
    app: str
    host: str
    what: dict[str, Any]


def policy_sha256(policy: Policy) -> str:
    """Of the whole policy document: any edit of the file is a new version of the state."""
    return hashlib.sha256(policy.document.model_dump_json().encode()).hexdigest()


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def effective(policy: Policy, state: LiveState, host: str) -> HostSetting:
    """The phase and percentage `host` is served with."""
    setting = state.hosts.get(host)
    if setting is not None:
        return setting
    entry = policy.host(host)
    phase = entry.phase if entry is not None else Phase.REPORT_ONLY
    return HostSetting(phase, 100.0 if phase is Phase.ENFORCE else 0.0)


def _name(value: str) -> str:
    return value.strip().lower().rstrip(".")


def _known_host(policy: Policy, host: str) -> str:
    name = _name(host)
    if not name or name not in {h.host for h in policy.hosts}:
        known = ", ".join(h.host for h in policy.hosts) or "none"
        raise ChangeError(404, f"unknown host {host!r}: the policy's hosts are {known}", "host")
    return name


def _known_app(policy: Policy, app: str) -> str:
    if app not in policy.app_ids:
        known = ", ".join(policy.app_ids)
        raise ChangeError(404, f"unknown app {app!r}: the policy's apps are {known}", "app")
    return app


def _percent(value: float | None) -> float:
    if value is None:
        return 100.0
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        raise ChangeError(400, "percent must be a number from 0 to 100", "percent")
    if not 0 <= value <= 100:
        raise ChangeError(400, f"percent must be from 0 to 100, not {value:g}", "percent")
    if abs(value * 100 - round(value * 100)) > 1e-6:
        raise ChangeError(
            400, f"percent has at most two decimals (0.01 % steps): {value}", "percent"
        )
    return float(value)


def _check_words(change: Change) -> None:
    if change.action not in LEVERS:
        levers = ", ".join(LEVERS)
        raise ChangeError(400, f"unknown action {change.action!r}: one of {levers}", "action")
    if not change.actor.strip() or len(change.actor) > MAX_ACTOR:
        raise ChangeError(400, f"actor (who) is 1 to {MAX_ACTOR} characters", "actor")
    if len(change.reason) > MAX_REASON:
        raise ChangeError(400, f"reason is at most {MAX_REASON} characters", "reason")
    if change.action == "kill" and not change.reason.strip():
        raise ChangeError(400, "a kill switch needs a reason (--reason)", "reason")


def apply_change(policy: Policy, state: LiveState, change: Change, at: str = "") -> Applied:
    """The state after `change`, version + 1; `ChangeError` when it is refused (the state
    is then untouched)."""
    _check_words(change)
    at = at or now_iso()
    version = {"version": state.version + 1, "changed_at": at}
    if change.action == "set_phase":
        host = _known_host(policy, change.host)
        try:
            phase = Phase(change.phase)
        except ValueError:
            raise ChangeError(
                400, f"phase must be report_only or enforce, not {change.phase!r}", "phase"
            ) from None
        if phase is Phase.REPORT_ONLY and change.percent not in (None, 0):
            raise ChangeError(400, "percent applies to enforce only", "percent")
        percent = _percent(change.percent) if phase is Phase.ENFORCE else 0.0
        before = effective(policy, state, host)
        after = HostSetting(phase, percent)
        if before == after:
            raise ChangeError(
                409, f"{host} is already {phase} at {percent:g} %: nothing to change", "phase"
            )
        new = replace(state, hosts={**state.hosts, host: after}, **version)
        what = {"phase": [before.phase.value, phase.value], "percent": [before.percent, percent]}
        return Applied(new, change.action, change.actor, change.reason, "", host, what)
    app = _known_app(policy, change.app)
    host = _known_host(policy, change.host) if change.host else ""
    current = state.killed(app, host)
    scope = f"{app} on {host}" if host else app
    if change.action == "kill":
        if current is not None:
            raise ChangeError(409, f"{scope} is already killed ({current.reason})", "app")
        kill = Kill(app, host, change.reason, change.actor, at)
        new = replace(state, kills=(*state.kills, kill), **version)
        return Applied(
            new, "kill", change.actor, change.reason, app, host, {"kill_switch": [False, True]}
        )
    if current is None:
        killed = ", ".join(k.scope for k in state.kills if k.app == app) or "nothing"
        raise ChangeError(409, f"{scope} is not killed (killed for {app}: {killed})", "app")
    new = replace(state, kills=tuple(k for k in state.kills if k is not current), **version)
    return Applied(
        new, "unkill", change.actor, change.reason, app, host, {"kill_switch": [True, False]}
    )


def adopt_policy_file(policy: Policy, state: LiveState, actor: str, at: str = "") -> Applied | None:
    """The state recorded against a policy file other than the one it was computed with
    (None when it is the same): version + 1, and settings for hosts or apps the file no longer
    names dropped (the audit row lists them)."""
    sha = policy_sha256(policy)
    if sha == state.policy_sha256:
        return None
    hosts = {h.host for h in policy.hosts}
    apps = set(policy.app_ids)
    kept_hosts = {h: s for h, s in state.hosts.items() if h in hosts}
    kept_kills = tuple(k for k in state.kills if k.app in apps and (not k.host or k.host in hosts))
    what: dict[str, Any] = {"policy_sha256": [state.policy_sha256, sha]}
    dropped = sorted(set(state.hosts) - set(kept_hosts))
    if dropped:
        what["dropped_host_settings"] = dropped
    gone = [k.scope for k in state.kills if k not in kept_kills]
    if gone:
        what["dropped_kills"] = gone
    new = LiveState(
        version=state.version + 1,
        changed_at=at or now_iso(),
        policy_sha256=sha,
        hosts=kept_hosts,
        kills=kept_kills,
    )
    reason = "first start" if not state.version else "the policy file changed"
    return Applied(new, "policy_file", actor, reason, "", "", what)


def document_claims(policy: Policy, state: LiveState, app_id: str) -> dict[str, Any]:
    """What app `app_id` is told, before the edge adds issue and expiry times and signs it.

    A client enforces host H when: not `kill_switch`, not H's `kill_switch`, H's `phase` is
    `enforce`, and its cohort bucket (pinwatch/cohort.py, with `cohort.salt`) is below
    `enforce_percent` * 100. Otherwise it validates and reports without enforcing.
    """
    app = next(a for a in policy.document.apps if a.id == app_id)
    hosts = []
    for entry in policy.hosts:
        setting = effective(policy, state, entry.host)
        hosts.append(
            {
                "host": entry.host,
                "include_subdomains": entry.include_subdomains,
                "phase": setting.phase.value,
                "enforce_percent": setting.percent,
                "kill_switch": state.killed(app.id, entry.host) is not None,
                "pins": [
                    {"sha256": p.sha256, "role": p.role.value, "label": p.label} for p in entry.pins
                ],
            }
        )
    return {
        "app": app.id,
        "version": state.version,
        "kill_switch": state.killed(app.id) is not None,
        "cohort": {"salt": app.cohort_salt or app.id, "function": COHORT_FUNCTION},
        "report": {"url": app.report_url, "success_fraction": app.report_success_fraction},
        "hosts": hosts,
    }


def client_enforces(claims: dict[str, Any], host: str, install_id: str) -> bool:
    """The client's rule, as a reference (the simulator's devices and the tests use it)."""
    from pinwatch.cohort import enforces

    if claims.get("kill_switch"):
        return False
    entry = next((h for h in claims.get("hosts", ()) if h["host"] == host), None)
    if entry is None or entry["kill_switch"] or entry["phase"] != Phase.ENFORCE.value:
        return False
    return enforces(claims["cohort"]["salt"], host, install_id, float(entry["enforce_percent"]))
