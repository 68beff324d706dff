"""Scenarios: what each device sees, before and after the scenario's change point.

A scenario never decides a report's result. It says which chain a server (or an interceptor)
serves a device, which pins the device's app version ships, and whether the network fails
below TLS; the device then validates the chain against its pins exactly as a pinning client
would (`devstack.simulate.emit`). So "unplanned rotation causes pin failures" is an outcome of
the simulation, not an input to it.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from devstack.simulate.population import Device, Population, Target


@dataclass(frozen=True)
class View:
    """One device's view of one host for one report interval."""

    served: str = "primary"  # chain served: primary | backup | rotated | intercepted
    network_error: str | None = None  # every request fails below TLS with this category
    volume: float = 1.0  # request volume multiplier
    aggregate: bool = True  # False: one report per failure (a misbehaving client)
    version: str | None = None  # app version override (devices that upgraded)
    pins: tuple[str, ...] | None = None  # pin set override (what that version ships)


STEADY = View()

# The pin a broken release ships instead of the real primary: a well-formed SPKI hash of
# nothing the server has, as a copy-paste mistake in a build config would produce.
WRONG_PIN = base64.b64encode(hashlib.sha256(b"pinwatch simulated wrong pin").digest()).decode()

ViewFn = Callable[[Population, Device, Target, bool], View]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str  # one line for --help and progress
    expect: str  # what the pipeline should make of it
    view: ViewFn


def _incident_host(population: Population) -> Target:
    """Incidents hit the first enforced host (the app's API); report-only hosts stay steady."""
    return next((t for t in population.targets if t.enforced), population.targets[0])


def _steady(population: Population, device: Device, target: Target, changed: bool) -> View:
    return STEADY


def _incident_serves(served: str) -> ViewFn:
    """After the change the incident host serves another key: its pinned backup (a planned
    rotation) or an unpinned one (unplanned)."""

    def view(population: Population, device: Device, target: Target, changed: bool) -> View:
        if changed and target is _incident_host(population):
            return View(served=served)
        return STEADY

    return view


def _interception(population: Population, device: Device, target: Target, changed: bool) -> View:
    if changed and device.network.index == 0:
        return View(served="intercepted")
    return STEADY


def _dns_outage(population: Population, device: Device, target: Target, changed: bool) -> View:
    if changed and target is _incident_host(population):
        return View(network_error="dns")
    return STEADY


def flood_device(population: Population) -> Device:
    return population.devices[0]


def _flood(population: Population, device: Device, target: Target, changed: bool) -> View:
    # A developer's phone behind a debugging proxy, retrying in a tight loop and reporting
    # every failure separately: many reports, one device, one network, private root.
    if changed and device is flood_device(population):
        return View(served="intercepted", volume=25.0, aggregate=False)
    return STEADY


BAD_RELEASE_VERSION = "9.9.0"


def upgraded(device: Device) -> bool:
    """A stable ~40% of devices install the new release after the change point."""
    return zlib.crc32(device.id.encode()) % 10 < 4


def _bad_release(population: Population, device: Device, target: Target, changed: bool) -> View:
    if not (changed and upgraded(device)):
        return STEADY
    pins = None
    if target is _incident_host(population):
        backups = target.pins[1:]
        pins = (WRONG_PIN, *backups)
    return View(version=BAD_RELEASE_VERSION, pins=pins)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "steady",
            "every device sees the pinned primary; ~1% of requests fail below TLS",
            "successes and a few network errors; no pin failures",
            _steady,
        ),
        Scenario(
            "planned_rotation",
            "the API host moves to its pinned backup key",
            "validations stay ok, pin_match moves from primary to backup; no pin failures",
            _incident_serves("backup"),
        ),
        Scenario(
            "unplanned_rotation",
            "the API host moves to a publicly trusted but unpinned key",
            "pin failures on every network, public chain: cause rotation_suspected; pages",
            _incident_serves("rotated"),
        ),
        Scenario(
            "interception",
            "a TLS-inspecting corporate proxy on network 0 (corp-wifi-0), private root",
            "pin failures from one network only: cause interception_suspected; a ticket",
            _interception,
        ),
        Scenario(
            "dns_outage",
            "the API host stops resolving",
            "network errors (dns) climb; pin failures stay at zero",
            _dns_outage,
        ),
        Scenario(
            "device_flood",
            "one device behind a debugging proxy floods unaggregated pin failures",
            "many failing reports from one device and one network: interception, no page",
            _flood,
        ),
        Scenario(
            "bad_release",
            f"~40% of devices upgrade to {BAD_RELEASE_VERSION}, which ships a wrong pin set",
            "pin failures only on the new app version, while the server serves the primary",
            _bad_release,
        ),
    )
}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(
            f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)}"
        ) from None
