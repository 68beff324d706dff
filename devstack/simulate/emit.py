"""Pure payload builders: one device's report interval becomes HTTP requests, in the native
batch format or as TrustKit or a browser's Network Error Logging would send it.

Each device validates the chain it is served against the pins its app version ships (the same
rule every pinning client applies: the connection passes when any SPKI in the chain is
pinned), so results follow from the scenario's view of the world. Every request carries the
counts it should produce downstream (`Request.expected`) so tests and the demo can compare the
pipeline's numbers with what was sent.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from devstack import clients
from devstack.certs import CertificateAuthority, Chain
from devstack.simulate.population import ClientFormat, Device, Population, Target
from devstack.simulate.scenarios import Scenario, View

T = TypeVar("T")

NATIVE_PATH = "/v1/reports"
TRUSTKIT_PATH = "/v1/reports/trustkit"
NEL_PATH = "/v1/reports/nel"

# TrustKit's TSKTrustEvaluationResult values (TrustKit/Pinning/TSKPinningValidatorResult.h).
_TRUSTKIT_RESULT = {"pin_mismatch": 1, "chain_invalid": 2}
# NEL error types (W3C Network Error Logging, section 6.2.4 and Chromium's mapping).
_NEL_TYPE = {
    "ok": "ok",
    "pin_mismatch": "tls.cert.pinned_key_not_in_cert_chain",
    "chain_invalid": "tls.cert.authority_invalid",
    "dns": "dns.name_not_resolved",
    "tcp": "tcp.refused",
    "timeout": "tcp.timed_out",
    "tls": "tls.protocol.error",
    "http": "http.protocol.error",
    "other": "unknown",
}
_NEL_PHASE = {"dns": "dns", "tcp": "connection", "timeout": "connection", "ok": "application"}
_STEADY_ERRORS = ("timeout", "timeout", "tcp", "tls")


class Chains:
    """The chains simulated servers serve, built once per host from the demo (or test) PKI."""

    def __init__(self, pki_dir: Path) -> None:
        self.pki_dir = pki_dir
        self._cache: dict[tuple[str, str], Chain] = {}

    def get(self, host: str, served: str) -> Chain:
        key = (host, served)
        if key not in self._cache:
            ca = CertificateAuthority.load(self.pki_dir, host=host)
            if served == "intercepted":
                self._cache[key] = ca.intercepted_chain()
            elif served in {"primary", "backup", "rotated"}:
                self._cache[key] = ca.chain(served)
            else:
                raise ValueError(f"unknown served chain {served!r}")
        return self._cache[key]


@dataclass
class Request:
    """One HTTP request a device would make to ingest."""

    path: str
    body: bytes
    headers: dict[str, str]
    source_address: str  # the device's network: ingest sees this /24 as client_network
    device: str
    # Sums of `count` this request should add downstream, keyed "pin:<result>",
    # "pin:<result>:<served>" and "error:<category>"; "reports" is the number of report items.
    expected: Counter[str] = field(default_factory=Counter)

    @property
    def has_pin_failure(self) -> bool:
        return any(k.startswith("pin:") and not k.startswith("pin:ok") for k in self.expected)

    @property
    def has_enforced_failure(self) -> bool:
        return any(k.startswith("enforced:") and k != "enforced:ok" for k in self.expected)


def poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 50:  # normal approximation; exactness does not matter for traffic shape
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


@dataclass
class Outcome:
    """What one device's requests to one host came to over one interval."""

    target: Target
    view: View
    chain: Chain | None
    result: str | None  # ok | pin_mismatch | chain_invalid; None when nothing reached TLS
    validations: int  # connections that reached pin validation
    errors: Counter[str]  # network error category -> count
    enforced: bool = False  # the device enforced the host's pins (its remote policy says so)


def _pins(device: Device, outcome: Outcome) -> tuple[str, ...]:
    """The pins the device's app version ships for the outcome's host."""
    if outcome.view.pins is not None:
        return outcome.view.pins
    return device.pin_sets[outcome.target.host]


def observe(
    population: Population,
    device: Device,
    target: Target,
    view: View,
    chains: Chains,
    rng: random.Random,
) -> Outcome:
    requests = poisson(rng, population.config.requests_per_interval * view.volume)
    errors: Counter[str] = Counter()
    enforced = device.enforces(target)
    if view.network_error:
        if requests:
            errors[view.network_error] = requests
        return Outcome(target, view, None, None, 0, errors, enforced)
    for _ in range(requests):
        if rng.random() < population.config.network_error_rate:
            errors[rng.choice(_STEADY_ERRORS)] += 1
    validations = requests - sum(errors.values())
    chain = chains.get(target.host, view.served)
    pins = _pins(device, Outcome(target, view, None, None, 0, errors))
    # A device trusts the private root only where it was installed (the corporate network's
    # managed devices, a developer's phone): there trust passes and only the pins catch it.
    if any(pin in pins for pin in chain.pins):
        result = "ok"
    else:
        result = "pin_mismatch"
    return Outcome(target, view, chain, result, validations, errors, enforced)


def device_requests(
    population: Population,
    scenario: Scenario,
    device: Device,
    *,
    changed: bool,
    chains: Chains,
    rng: random.Random,
    now: dt.datetime | None = None,
) -> list[Request]:
    """The requests one device sends for one report interval (empty when it has nothing)."""
    now = now or dt.datetime.now(dt.UTC)
    views = {t.host: scenario.view(population, device, t, changed) for t in population.targets}
    outcomes = [
        observe(population, device, t, views[t.host], chains, rng) for t in population.targets
    ]
    version = next((v.version for v in views.values() if v.version), device.version)
    if device.client_format is ClientFormat.TRUSTKIT:
        return trustkit_requests(device, version, outcomes, now)
    if device.client_format is ClientFormat.NEL:
        return nel_requests(device, outcomes, now, rng)
    return native_requests(device, version, outcomes, now)


def _expect(expected: Counter[str], outcome: Outcome, count: int, reports: int) -> None:
    expected[f"pin:{outcome.result}"] += count
    expected[f"pin:{outcome.result}:{outcome.view.served}"] += count
    if outcome.enforced:  # what users of enforcing devices met (a failure: no connection)
        expected[f"enforced:{outcome.result}"] += count
    expected["reports"] += reports


MAX_REPORTS_PER_REQUEST = 500  # below ingest's max_reports_per_batch default (1000)


def native_requests(
    device: Device,
    version: str,
    outcomes: list[Outcome],
    now: dt.datetime,
    max_reports: int = MAX_REPORTS_PER_REQUEST,
) -> list[Request]:
    """The native batch format; a device with more to say than one batch holds sends several."""
    items: list[tuple[dict[str, Any], Counter[str]]] = []
    for o in outcomes:
        for category, count in sorted(o.errors.items()):
            report = clients.network_error(
                o.target.host,
                category,
                count=count,
                detail=f"simulated {category} failure",
                at=now,
            )
            items.append((report, Counter({f"error:{category}": count, "reports": 1})))
        if not o.validations or o.chain is None or o.result is None:
            continue
        counts = [o.validations] if o.result == "ok" or o.view.aggregate else [1] * o.validations
        for count in counts:
            expected: Counter[str] = Counter()
            _expect(expected, o, count, 1)
            report = clients.pin_validation(
                o.target.host,
                o.chain,
                result=o.result,
                enforced=o.enforced,
                count=count,
                with_chain=o.result != "ok",  # a success's chain says nothing new
                at=now,
            )
            items.append((report, expected))
    requests = []
    for chunk in _chunks(items, max_reports):
        body = clients.native_batch(
            [report for report, _ in chunk],
            app=device.app.id,
            version=version,
            platform=device.platform,
            device=device.id,
            network=device.network.kind,
            os_version=device.os_version,
            sent_at=now,
        )
        requests.append(
            Request(
                path=NATIVE_PATH,
                body=orjson.dumps(body),
                headers={
                    "Content-Type": "application/json",
                    "X-Pinwatch-Key": device.app.ingest_key,
                },
                source_address=device.network.source_address,
                device=device.id,
                expected=_sum(counts for _, counts in chunk),
            )
        )
    return requests


def trustkit_requests(
    device: Device, version: str, outcomes: list[Outcome], now: dt.datetime
) -> list[Request]:
    """TrustKit reports failures only, one POST per failed validation, and no successes or
    network errors: such devices add nothing to the denominator. Like TrustKit's own rate limiter,
    a device sends an identical report (host, chain, result, pins) only once."""
    requests = []
    for o in outcomes:
        if o.result in (None, "ok") or not o.validations or o.chain is None:
            continue
        seen = (o.target.host, o.result, tuple(o.chain.pins), _pins(device, o))
        if seen in device.trustkit_sent:
            continue
        device.trustkit_sent.add(seen)
        if device.platform == "android":
            body = clients.trustkit_android(
                o.target.host,
                o.chain,
                known_pins=list(_pins(device, o)),
                validation_result=_TRUSTKIT_RESULT[o.result],
                enforce_pinning=o.enforced,
                package=device.app.id,
                app_version=version,
                vendor_id=device.id,
                local_time=now,
            )
        else:
            body = clients.trustkit_ios(
                o.target.host,
                o.chain,
                known_pins=list(_pins(device, o)),
                validation_result=_TRUSTKIT_RESULT[o.result],
                enforce_pinning=o.enforced,
                bundle_id=device.app.id,
                app_version=version,
                platform=device.platform.upper(),
                platform_version=device.os_version,
                vendor_id=device.id,
                at=now,
            )
        expected: Counter[str] = Counter()
        _expect(expected, o, 1, 1)
        requests.append(
            Request(
                path=f"{TRUSTKIT_PATH}?key={device.app.ingest_key}",
                body=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
                source_address=device.network.source_address,
                device=device.id,
                expected=expected,
            )
        )
    return requests


def nel_requests(
    device: Device, outcomes: list[Outcome], now: dt.datetime, rng: random.Random
) -> list[Request]:
    """A browser's Reporting API delivery: a POST holding a list of NEL reports, one per
    request (success_fraction 1.0 here, so every success is reported and counts are exact)."""
    items: list[tuple[dict[str, Any], Counter[str]]] = []

    def nel(host: str, kind: str, phase: str, status: int) -> dict[str, Any]:
        return clients.nel_report(
            # A resource id per request, as real API URLs have: ingest derives NEL report ids
            # from the content, and identical reports from one network in one minute are one.
            f"https://{host}/v1/items/{rng.getrandbits(40)}",
            _NEL_TYPE[kind],
            age_ms=rng.randint(0, 2000),
            phase=phase,
            status_code=status,
            elapsed_time=rng.randint(20, 900),
            server_ip="",
        )

    for o in outcomes:
        for category, count in o.errors.items():
            phase = _NEL_PHASE.get(category, "connection")
            one = Counter({f"error:{_nel_category(category)}": 1, "reports": 1})
            items.extend((nel(o.target.host, category, phase, 0), one) for _ in range(count))
        if o.result is None or not o.validations:
            continue
        phase, status = ("application", 200) if o.result == "ok" else ("connection", 0)
        if o.result == "chain_invalid":
            # NEL has no "chain invalid" pin outcome: ingest files tls.cert.authority_invalid
            # as a network error (category tls), so that is what it must be counted as.
            one = Counter({f"error:{_nel_category(o.result)}": 1, "reports": 1})
        else:
            one = Counter()
            _expect(one, o, 1, 1)
        report = o.result
        items.extend((nel(o.target.host, report, phase, status), one) for _ in range(o.validations))
    return [
        Request(
            path=f"{NEL_PATH}?key={device.app.ingest_key}",
            body=orjson.dumps([report for report, _ in chunk]),
            headers={"Content-Type": "application/reports+json"},
            source_address=device.network.source_address,
            device=device.id,
            expected=_sum(counts for _, counts in chunk),
        )
        for chunk in _chunks(items)
    ]


def _nel_category(category: str) -> str:
    """The category ingest files a NEL type under: its prefix (tcp.timed_out is tcp)."""
    prefix = _NEL_TYPE[category].split(".", 1)[0]
    return prefix if prefix in {"dns", "tcp", "tls", "http"} else "other"


def _chunks(items: list[T], size: int = MAX_REPORTS_PER_REQUEST) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _sum(counters: Iterable[Counter[str]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for counter in counters:
        total.update(counter)
    return total
