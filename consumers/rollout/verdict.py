"""Go / no-go: ready, or not ready with every reason stated.

Pure functions over the numbers the analysis found, so each rule is unit-tested on its own and the
bars come from settings (`rollout_*`), never from the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pinwatch.settings import Settings


@dataclass(frozen=True)
class Thresholds:
    max_would_fail_share: float
    min_devices: int
    min_group_devices: int
    surprise_min_networks: int
    max_interception_share: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            max_would_fail_share=settings.rollout_max_would_fail_share,
            min_devices=settings.rollout_min_devices,
            min_group_devices=settings.rollout_min_group_devices,
            surprise_min_networks=settings.rollout_surprise_min_networks,
            max_interception_share=settings.rollout_max_interception_share,
        )


@dataclass(frozen=True)
class Group:
    """Distinct devices of one slice (everything, one app version, one platform, one network)."""

    value: str
    reports: int
    devices: int
    server_failing: int  # devices served a chain the pin set rejects by the host itself
    intercepted: int  # devices whose chain the pin set rejects behind TLS interception

    @property
    def would_fail_share(self) -> float:
        """Share of devices that enforcing would cut off from the real server's chain."""
        return self.server_failing / self.devices if self.devices else 0.0

    @property
    def interception_share(self) -> float:
        return self.intercepted / self.devices if self.devices else 0.0


@dataclass(frozen=True)
class SurprisePin:
    """A served key the pin set does not contain, on a chain that is not an interception."""

    pin: str
    reports: int
    devices: int
    networks: int


@dataclass(frozen=True)
class Reason:
    code: str  # would_fail_share | group_would_fail | surprise_pin | too_few_devices | interception
    message: str
    value: float
    threshold: float
    subject: str = ""  # the app version, platform or pin the reason is about


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reasons: list[Reason] = field(default_factory=list)


def _pct(share: float) -> str:
    return f"{share * 100:.2f}%"


def decide(
    total: Group,
    by_app_version: list[Group],
    by_platform: list[Group],
    surprise_pins: list[SurprisePin],
    t: Thresholds,
) -> Verdict:
    reasons: list[Reason] = []
    if total.devices < t.min_devices:
        reasons.append(
            Reason(
                "too_few_devices",
                f"only {total.devices} devices reported; at least {t.min_devices} are needed "
                "to judge",
                total.devices,
                t.min_devices,
            )
        )
    if total.would_fail_share > t.max_would_fail_share:
        reasons.append(
            Reason(
                "would_fail_share",
                f"{_pct(total.would_fail_share)} of devices ({total.server_failing} of "
                f"{total.devices}) are served a chain this pin set rejects; the bar is "
                f"{_pct(t.max_would_fail_share)}",
                total.would_fail_share,
                t.max_would_fail_share,
            )
        )
    for dimension, groups in (("app version", by_app_version), ("platform", by_platform)):
        for g in groups:
            if g.devices >= t.min_group_devices and g.would_fail_share > t.max_would_fail_share:
                reasons.append(
                    Reason(
                        "group_would_fail",
                        f"{dimension} {g.value}: {_pct(g.would_fail_share)} of its devices "
                        f"({g.server_failing} of {g.devices}) would fail",
                        g.would_fail_share,
                        t.max_would_fail_share,
                        subject=f"{dimension}={g.value}",
                    )
                )
    for s in surprise_pins:
        if s.networks >= t.surprise_min_networks:
            reasons.append(
                Reason(
                    "surprise_pin",
                    f"surprise pin {s.pin} (public chain, not in the pin set) seen by "
                    f"{s.devices} devices from {s.networks} networks",
                    s.networks,
                    t.surprise_min_networks,
                    subject=s.pin,
                )
            )
    if total.interception_share > t.max_interception_share:
        reasons.append(
            Reason(
                "interception",
                f"{_pct(total.interception_share)} of devices ({total.intercepted}) are behind "
                f"TLS interception and would lose the host; the bar is "
                f"{_pct(t.max_interception_share)}",
                total.interception_share,
                t.max_interception_share,
            )
        )
    return Verdict(ready=not reasons, reasons=reasons)
