"""The prober: on an interval, a TLS handshake with every policy host at every address it
resolves to (each CDN edge), with SNI, and the served chain judged against the host's pins.

"The pins of every live app version": pinwatch's policy holds one pin set per host, and every
shipped app version pins it (the `policy` pin set, alerted on in the host's phase: enforce pages,
report_only opens a ticket). The host's candidate pin sets are judged too, under their own
`pin_set` label, so a rollout can see whether a candidate pins what every edge serves; they
never alert.

Results go to metrics (prober/metrics.py) and, when an edge's result changes, to one structured
log line. A failed handshake (timeout, refused, not TLS) is an error counted apart: an edge's
pin result stays what its last successful handshake showed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pinwatch.logs import event
from pinwatch.pins import spki_pin
from pinwatch.policy import HostPolicy, Pin, Policy, match_pins
from pinwatch.roots import PublicRoots
from pinwatch.settings import Settings
from pinwatch.vocabulary import Phase, PinMatch
from prober.chain import Edge, HostProbe, probe_host
from prober.describe import common_name, with_root
from prober.metrics import PIN_MATCHES, POLICY_PIN_SET, ProbeMetrics

log = logging.getLogger("pinwatch.probe")


@dataclass
class _EdgeState:
    pin_match: str | None = None  # at the last successful handshake
    leaf_pin: str | None = None
    error: str | None = None  # reason of the last failure; None after a success


def pin_sets(host: HostPolicy) -> dict[str, list[Pin]]:
    return {POLICY_PIN_SET: list(host.pins), **host.candidate_pin_sets}


class Prober:
    def __init__(
        self,
        policy: Policy,
        settings: Settings,
        *,
        overrides: dict[str, list[str]] | None = None,
        roots: PublicRoots | None = None,
        metrics: ProbeMetrics | None = None,
    ) -> None:
        self.policy = policy
        self.settings = settings
        self.overrides = {**settings.probe_resolve, **(overrides or {})}
        self.roots = roots
        self.metrics = metrics or ProbeMetrics(policy)
        self._state: dict[tuple[str, str], _EdgeState] = {}

    def last_result(self, host: str, address: str) -> tuple[str | None, str | None]:
        """(pin match, leaf pin) of the address's last successful handshake."""
        state = self._state.get((host, address), _EdgeState())
        return state.pin_match, state.leaf_pin

    async def round(self) -> list[HostProbe]:
        """One handshake with every edge of every host; metrics and logs updated."""
        started = time.monotonic()
        s = self.settings
        limit = asyncio.Semaphore(s.probe_concurrency)
        probes = await asyncio.gather(
            *(
                probe_host(
                    h.host,
                    h.port,
                    timeout=s.probe_timeout_seconds,
                    max_addresses=s.probe_max_addresses_per_host,
                    overrides=self.overrides,
                    limit=limit,
                )
                for h in self.policy.hosts
            )
        )
        for host, probe in zip(self.policy.hosts, probes, strict=True):
            self._record(host, probe)
        m = self.metrics
        m.rounds.inc()
        m.round_seconds.set(time.monotonic() - started)
        m.last_round.set(time.time())
        return list(probes)

    def _record(self, host: HostPolicy, probe: HostProbe) -> None:
        m = self.metrics
        if probe.error is not None:
            # Resolution failed: no edge was asked, the last results stand.
            m.errors.labels(host.host, "", probe.error.reason).inc()
            self._failed(host, "", probe.error.reason, str(probe.error))
            return
        self._state.get((host.host, ""), _EdgeState()).error = None
        m.addresses.labels(host.host).set(len(probe.edges))
        m.addresses_dropped.labels(host.host).set(probe.dropped)
        if probe.dropped:
            event(
                log,
                "probe_addresses_capped",
                logging.WARNING,
                host=host.host,
                probed=len(probe.edges),
                dropped=probe.dropped,
            )
        current = {edge.address for edge in probe.edges}
        for (name, address), state in list(self._state.items()):
            if name == host.host and address and address not in current:
                m.forget(name, address, list(pin_sets(host)), state.leaf_pin)
                del self._state[(name, address)]
                event(log, "probe_address_gone", host=name, address=address)
        for edge in probe.edges:
            if edge.error is not None:
                m.errors.labels(host.host, edge.address, edge.error.reason).inc()
                m.success.labels(host.host, edge.address).set(0)
                self._failed(host, edge.address, edge.error.reason, str(edge.error))
            else:
                self._succeeded(host, edge)

    def _failed(self, host: HostPolicy, address: str, reason: str, message: str) -> None:
        state = self._state.setdefault((host.host, address), _EdgeState())
        if state.error != reason:  # log changes, not every round of a lasting failure
            event(
                log,
                "probe_failed",
                logging.WARNING,
                host=host.host,
                address=address,
                reason=reason,
                error=message,
            )
        state.error = reason

    def _succeeded(self, host: HostPolicy, edge: Edge) -> None:
        assert edge.chain is not None
        m = self.metrics
        served = list(edge.chain.certificates)
        chain, _ = with_root(served, self.roots)
        pins = [spki_pin(c) for c in chain]
        for name, pin_set in pin_sets(host).items():
            found = str(match_pins(pin_set, pins))
            for match in PIN_MATCHES:
                m.pin_match.labels(host.host, edge.address, name, match).set(
                    1 if match == found else 0
                )
        result = str(host.match(pins))
        m.success.labels(host.host, edge.address).set(1)
        m.last_success.labels(host.host, edge.address).set(time.time())
        m.handshake_seconds.labels(host.host, edge.address).set(edge.chain.seconds)
        m.leaf_not_after.labels(host.host, edge.address).set(
            served[0].not_valid_after_utc.timestamp()
        )
        state = self._state.setdefault((host.host, edge.address), _EdgeState())
        if state.leaf_pin != pins[0]:
            if state.leaf_pin is not None:
                m.served_leaf.remove(host.host, edge.address, state.leaf_pin)
            m.served_leaf.labels(host.host, edge.address, pins[0]).set(1)
        if (state.pin_match, state.leaf_pin, state.error) != (result, pins[0], None):
            unpinned = result == PinMatch.NONE
            event(
                log,
                "probe_result",
                logging.WARNING if unpinned else logging.INFO,
                host=host.host,
                address=edge.address,
                phase=str(host.phase),
                pin_match=result,
                previous=state.pin_match,
                leaf_pin=pins[0],
                leaf_subject=common_name(served[0]),
                leaf_not_after=served[0].not_valid_after_utc.isoformat(),
                enforced_clients_fail=unpinned and host.phase == Phase.ENFORCE,
            )
        state.pin_match, state.leaf_pin, state.error = result, pins[0], None

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds every probe_interval_seconds (measured start to start) until `stop`."""
        interval = self.settings.probe_interval_seconds
        while not stop.is_set():
            started = time.monotonic()
            await self.round()
            elapsed = time.monotonic() - started
            if elapsed > interval:
                event(
                    log,
                    "probe_round_slow",
                    logging.WARNING,
                    seconds=round(elapsed, 2),
                    interval=interval,
                )
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, interval - elapsed))
            except TimeoutError:
                pass  # the next round is due
