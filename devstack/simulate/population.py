"""The simulated user base: devices running apps, spread over app versions, platforms and
networks, each network a distinct loopback /24 so ingest sees a distinct client prefix.

Ingest derives `client_network` from the TCP peer address. On loopback every request would come
from 127.0.0.1, so each simulated network binds its connections to its own source address in
127.0.0.0/8 (Linux routes the whole /8 to `lo`): devices on network 3 appear as 127.77.3.0/24.
No ingest setting or proxy header is needed, and nothing leaves the machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pinwatch.livepolicy import client_enforces
from pinwatch.policy import Policy
from pinwatch.vocabulary import Phase


class ClientFormat(StrEnum):
    NATIVE = "native"
    TRUSTKIT = "trustkit"
    NEL = "nel"


@dataclass(frozen=True)
class Network:
    index: int
    name: str  # "corp-wifi-0", "cellular-3": what the device reports as its network
    kind: str  # wifi | cellular
    source_address: str  # loopback address the device's requests leave from

    @property
    def prefix(self) -> str:
        return self.source_address.rsplit(".", 1)[0] + ".0/24"


@dataclass(frozen=True)
class Target:
    """A pinned host as the simulator needs it: name, enforcement and the pins apps ship."""

    host: str
    enforced: bool
    pins: tuple[str, ...]  # primary and backup pins from the policy


@dataclass(frozen=True)
class AppSpec:
    id: str
    ingest_key: str


@dataclass
class Device:
    id: str  # the install id as the app would send it (ingest hashes it)
    app: AppSpec
    version: str
    platform: str
    os_version: str
    network: Network
    client_format: ClientFormat
    offset: float  # seconds into each report interval at which this device reports
    pin_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # host -> shipped pins
    # what TrustKit's rate limiter has already let through: it sends an identical report
    # (host, chain, result, pins) once a day at most, whatever the date-time says
    trustkit_sent: set[tuple[object, ...]] = field(default_factory=set, compare=False, repr=False)
    # The verified remote policy document it obeys (devstack/simulate/remote.py); None: none yet
    policy: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def enforces(self, target: Target) -> bool:
        """Whether this device enforces the host's pins now: as its remote policy document says
        (phase, its cohort, kill switches), else as the app was built (the file's phase)."""
        if self.policy is None:
            return target.enforced
        return client_enforces(self.policy, target.host, self.id)


@dataclass(frozen=True)
class PopulationConfig:
    devices: int = 200
    networks: int = 8
    apps: tuple[str, ...] = ()  # app ids from the policy; empty: all of them
    versions: tuple[str, ...] = ("5.1.0", "5.2.0")
    platforms: tuple[str, ...] = ("ios", "android")
    client_format: str = "native"  # native | trustkit | nel | mixed
    report_interval: float = 5.0  # seconds between one device's batches
    requests_per_interval: float = 20.0  # mean HTTPS requests per device, host and interval
    network_error_rate: float = 0.01  # share of requests that fail below TLS in steady state
    address_base: int = 77  # second octet of the simulated networks' loopback addresses

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 100_000:
            raise ValueError(f"devices must be 1..100000, got {self.devices}")
        if not 1 <= self.networks <= 250:
            raise ValueError(f"networks must be 1..250, got {self.networks}")
        if self.client_format not in {*ClientFormat, "mixed"}:
            raise ValueError(
                f"client format must be native, trustkit, nel or mixed, not {self.client_format!r}"
            )
        if self.report_interval <= 0 or self.requests_per_interval <= 0:
            raise ValueError("report_interval and requests_per_interval must be positive")
        if not 0 <= self.network_error_rate < 1:
            raise ValueError("network_error_rate must be in [0, 1)")
        if not 1 <= self.address_base <= 254:
            raise ValueError("address_base must be 1..254 (127.<base>.<network>.1)")
        if not self.versions or not self.platforms:
            raise ValueError("at least one app version and one platform are needed")


# Mixed populations: most apps use their own pinning code, some TrustKit, a few web clients.
_MIX = ((ClientFormat.NATIVE, 0.6), (ClientFormat.TRUSTKIT, 0.25), (ClientFormat.NEL, 0.15))
_OS = {"ios": ("17.6", "18.1"), "android": ("14", "15"), "web": ("",)}


@dataclass
class Population:
    config: PopulationConfig
    apps: list[AppSpec]
    targets: list[Target]
    networks: list[Network]
    devices: list[Device]

    def target(self, host: str) -> Target:
        return next(t for t in self.targets if t.host == host)


def build_population(
    policy: Policy, config: PopulationConfig | None = None, seed: int = 1
) -> Population:
    """Deterministic for a given policy, config and seed, so tests can predict it."""
    config = config or PopulationConfig()
    rng = random.Random(seed)
    apps = [
        AppSpec(app.id, app.ingest_keys[0])
        for app in policy.document.apps
        if not config.apps or app.id in config.apps
    ]
    unknown = set(config.apps) - {a.id for a in apps}
    if unknown:
        raise ValueError(f"apps not in the policy: {', '.join(sorted(unknown))}")
    if not policy.hosts:
        raise ValueError("the policy names no hosts to simulate traffic against")
    targets = [
        Target(
            host=h.host,
            enforced=h.phase is Phase.ENFORCE,
            pins=tuple(p.sha256 for p in h.pins),
        )
        for h in policy.hosts
    ]
    networks = [
        Network(
            index=i,
            name=f"{'corp-wifi' if i == 0 else 'wifi' if i % 2 else 'cellular'}-{i}",
            kind="cellular" if i % 2 == 0 and i else "wifi",
            source_address=f"127.{config.address_base}.{i}.1",
        )
        for i in range(config.networks)
    ]
    devices = []
    for n in range(config.devices):
        fmt = _pick_format(config.client_format, rng)
        platform = "web" if fmt is ClientFormat.NEL else rng.choice(config.platforms)
        device = Device(
            id=f"sim-{seed}-{n:06d}",
            app=apps[n % len(apps)],
            version=rng.choice(config.versions),
            platform=platform,
            os_version=rng.choice(_OS.get(platform, ("1.0",))),
            # Spread devices evenly so every network has some (interception needs network 0).
            network=networks[n % len(networks)],
            client_format=fmt,
            offset=rng.uniform(0, config.report_interval),
            pin_sets={t.host: t.pins for t in targets},
        )
        devices.append(device)
    return Population(config, apps, targets, networks, devices)


def _pick_format(choice: str, rng: random.Random) -> ClientFormat:
    if choice != "mixed":
        return ClientFormat(choice)
    r = rng.random()
    for fmt, share in _MIX:
        if r < share:
            return fmt
        r -= share
    return ClientFormat.NATIVE
