"""Report-only traffic for the rollout tests, and the answer it must produce.

A `Traffic` is a list of what each simulated device was served and reported (real chains from
devstack.certs); the same object says what every number of the rollout answer has to be, worked
out independently of ClickHouse, so a test compares the answer with what was sent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from devstack.certs import CertificateAuthority, Chain

VERSIONS = ("5.0.0", "5.1.0", "5.2.0")
PLATFORMS = ("ios", "android")
INTERCEPTION = "interception_suspected"


@dataclass(frozen=True)
class Sent:
    """One report as a device sent it (report-only unless `enforced`)."""

    report_id: str
    device: str
    app_version: str
    platform: str
    network: str  # loopback source address the device sends from, e.g. 127.77.3.1
    chain: Chain
    result: str  # ok | pin_mismatch
    cause: str  # what the consumer should conclude: '' | rotation_suspected | interception_...
    count: int
    enforced: bool = False  # a device of the enforced cohort (staged enforcement)

    @property
    def prefix(self) -> str:
        return self.network.rsplit(".", 1)[0] + ".0/24"

    @property
    def leaf_pin(self) -> str:
        return self.chain.pins[0]


@dataclass
class Traffic:
    ca: CertificateAuthority
    sent: list[Sent] = field(default_factory=list)

    def add(
        self,
        device: str,
        version: str,
        platform: str,
        network: str,
        chain: Chain,
        *,
        counts: tuple[int, ...] = (1,),
        result: str = "ok",
        cause: str = "",
        enforced: bool = False,
    ) -> None:
        for count in counts:
            self.sent.append(
                Sent(
                    str(uuid.uuid4()),
                    device,
                    version,
                    platform,
                    network,
                    chain,
                    result,
                    cause,
                    count,
                    enforced,
                )
            )

    # --- scenarios -----------------------------------------------------------------------------

    @classmethod
    def clean(cls, ca: CertificateAuthority, *, version_5_0_on_backup: bool = False) -> Traffic:
        """36 devices on three app versions, two platforms and four networks, all served the
        pinned chain, plus two devices behind one TLS-intercepting corporate network."""
        t = cls(ca)
        primary, backup = ca.chain("primary"), ca.chain("backup")
        for i in range(36):
            version = VERSIONS[i % 3]
            # A release whose requests go to a legacy endpoint still serving the backup key.
            chain = backup if version_5_0_on_backup and version == "5.0.0" else primary
            t.add(
                f"dev-{i}",
                version,
                PLATFORMS[i % 2],
                f"127.77.{i % 4}.1",
                chain,
                counts=(1 + i % 5, 2),
            )
        for i in range(2):
            t.add(
                f"corp-{i}",
                "5.2.0",
                PLATFORMS[i],
                "127.78.9.1",
                ca.intercepted_chain(),
                counts=(3,),
                result="pin_mismatch",
                cause=INTERCEPTION,
            )
        return t

    def with_surprise_edge(self) -> Traffic:
        """One CDN edge serving a publicly trusted chain on an unpinned key, seen by six devices
        from three networks."""
        rotated = self.ca.chain("rotated")
        for i in range(6):
            self.add(
                f"edge-{i}",
                VERSIONS[i % 3],
                PLATFORMS[i % 2],
                f"127.79.{i % 3}.1",
                rotated,
                counts=(2,),
                result="pin_mismatch",
                cause="rotation_suspected",
            )
        return self

    # --- what the answer must say --------------------------------------------------------------

    def devices(self, rows: list[Sent]) -> int:
        return len({s.device for s in rows})

    def fails(self, s: Sent, candidates: list[str]) -> bool:
        return not set(s.chain.pins) & set(candidates)

    def expected_slice(self, rows: list[Sent], candidates: list[str], value: str = "") -> dict:
        failing = [s for s in rows if self.fails(s, candidates)]
        server = self.devices([s for s in failing if s.cause != INTERCEPTION])
        intercepted = self.devices([s for s in failing if s.cause == INTERCEPTION])
        devices = self.devices(rows)
        return {
            "value": value,
            "reports": sum(s.count for s in rows),
            "devices": devices,
            "would_fail_devices": server,
            "would_fail_share": server / devices,
            "intercepted_devices": intercepted,
            "interception_share": intercepted / devices,
        }

    def expected_by(self, attr: str, candidates: list[str]) -> list[dict]:
        values = sorted({getattr(s, attr) for s in self.sent})
        slices = [
            self.expected_slice([s for s in self.sent if getattr(s, attr) == v], candidates, v)
            for v in values
        ]
        return sorted(slices, key=lambda s: (-s["devices"], s["value"]))

    def expected_networks(self, candidates: list[str]) -> list[dict]:
        failing = {s.prefix for s in self.sent if self.fails(s, candidates)}
        slices = [
            self.expected_slice([s for s in self.sent if s.prefix == p], candidates, p)
            for p in failing
        ]
        return sorted(slices, key=_worst_first)

    def expected_pins(self, roles: dict[str, str]) -> dict[str, dict]:
        total_reports = sum(s.count for s in self.sent)
        total_devices = self.devices(self.sent)
        out = {}
        for leaf in {s.leaf_pin for s in self.sent}:
            rows = [s for s in self.sent if s.leaf_pin == leaf]
            reports = sum(s.count for s in rows)
            out[leaf] = {
                "role": roles.get(leaf, "none"),
                "reports": reports,
                "devices": self.devices(rows),
                "networks": len({s.prefix for s in rows}),
                "report_share": reports / total_reports,
                "device_share": self.devices(rows) / total_devices,
                "interception": all(s.cause == INTERCEPTION for s in rows),
            }
        return out


def _worst_first(s: dict) -> tuple:
    return (-(s["would_fail_devices"] + s["intercepted_devices"]), -s["devices"], s["value"])
