"""Every metric the prober and the CT watcher expose, each on its own CollectorRegistry (one per
instance, so tests run several in one process).

Pin results and probe errors never share a metric: a timeout says nothing about pins.

Label bounds: `host` is a policy host; `address` one of at most probe_max_addresses_per_host
addresses per host (an address that stops resolving loses its series); `pin_set` is `policy`
(the host's pin set: what every shipped app version pins) or a candidate set's name from the
policy; `pin_match` one of primary, backup, none; `reason` one of prober.chain.REASONS; `log` a
followed CT log's URL; the CT finding series are capped at ct_max_findings.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from pinwatch.policy import Policy
from pinwatch.vocabulary import PinMatch

POLICY_PIN_SET = "policy"
PIN_MATCHES = tuple(str(m) for m in PinMatch)


def policy_host_info(registry: CollectorRegistry, policy: Policy) -> Gauge:
    """`pinwatch_policy_host_info{app,host,phase} 1` for every app and host of the policy: the
    join that gives prober and CT alerts the `app` label client-side alerts carry, so
    Alertmanager groups one host's incident into one notification per app. The policy does not
    say which app uses which host, so every app is taken to pin every host."""
    gauge = Gauge(
        "pinwatch_policy_host_info",
        "1 per app and policy host, with the host's phase (enforce, report_only)",
        ["app", "host", "phase"],
        registry=registry,
    )
    for app in policy.app_ids:
        for host in policy.hosts:
            gauge.labels(app, host.host, str(host.phase)).set(1)
    return gauge


class ProbeMetrics:
    def __init__(self, policy: Policy) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.host_info = policy_host_info(r, policy)
        self.pin_match = Gauge(
            "pinwatch_probe_pin_match",
            "1 for the pin match (primary, backup, none) of the chain this address served at "
            "its last successful handshake, 0 for the other two; per pin set",
            ["host", "address", "pin_set", "pin_match"],
            registry=r,
        )
        self.success = Gauge(
            "pinwatch_probe_success",
            "1 when the last handshake with this address succeeded, 0 when it failed",
            ["host", "address"],
            registry=r,
        )
        self.errors = Counter(
            "pinwatch_probe_errors",
            "Failed probes by reason (dns, refused, unreachable, timeout, tls, no_certificate); "
            "address is empty when the host did not resolve",
            ["host", "address", "reason"],
            registry=r,
        )
        self.last_success = Gauge(
            "pinwatch_probe_last_success_timestamp_seconds",
            "Unix time of the last successful handshake with this address",
            ["host", "address"],
            registry=r,
        )
        self.handshake_seconds = Gauge(
            "pinwatch_probe_handshake_duration_seconds",
            "Seconds the last successful connect plus TLS handshake took",
            ["host", "address"],
            registry=r,
        )
        self.leaf_not_after = Gauge(
            "pinwatch_probe_leaf_not_after_timestamp_seconds",
            "Unix time the served leaf certificate expires",
            ["host", "address"],
            registry=r,
        )
        self.served_leaf = Gauge(
            "pinwatch_probe_served_leaf_info",
            "1 for the SPKI pin of the leaf this address serves (one series per address)",
            ["host", "address", "pin"],
            registry=r,
        )
        self.addresses = Gauge(
            "pinwatch_probe_addresses",
            "Addresses (edges) of the host probed in the last round",
            ["host"],
            registry=r,
        )
        self.addresses_dropped = Gauge(
            "pinwatch_probe_addresses_dropped",
            "Addresses the host resolved to beyond probe_max_addresses_per_host, not probed",
            ["host"],
            registry=r,
        )
        self.rounds = Counter(
            "pinwatch_probe_rounds", "Rounds over every policy host completed", registry=r
        )
        self.round_seconds = Gauge(
            "pinwatch_probe_round_duration_seconds",
            "Seconds the last round over every host and address took",
            registry=r,
        )
        self.last_round = Gauge(
            "pinwatch_probe_last_round_timestamp_seconds",
            "Unix time the last round ended",
            registry=r,
        )

    def forget(self, host: str, address: str, pin_sets: list[str], leaf_pin: str | None) -> None:
        """Drop an address's series: it no longer resolves (labels stay bounded)."""
        for pin_set in pin_sets:
            for match in PIN_MATCHES:
                _remove(self.pin_match, host, address, pin_set, match)
        for gauge in (self.success, self.last_success, self.handshake_seconds):
            _remove(gauge, host, address)
        _remove(self.leaf_not_after, host, address)
        if leaf_pin is not None:
            _remove(self.served_leaf, host, address, leaf_pin)


def _remove(metric: Gauge, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass  # never set


class CtMetrics:
    def __init__(self, policy: Policy) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.host_info = policy_host_info(r, policy)
        self.unpinned = Gauge(
            "pinwatch_ct_unpinned_certificate_info",
            "1 per logged certificate for a policy host, still valid, whose chain has no key "
            "of the host's pin set (newest ct_max_findings kept)",
            ["host", "log", "index", "not_before", "pin"],
            registry=r,
        )
        self.unpinned_found = Counter(
            "pinwatch_ct_unpinned_certificates",
            "Certificates for a policy host with no pinned key, found since start",
            ["host"],
            registry=r,
        )
        self.matched = Counter(
            "pinwatch_ct_matched_certificates",
            "Logged certificates and precertificates naming a policy host, pinned or not",
            ["log"],
            registry=r,
        )
        self.entries = Counter(
            "pinwatch_ct_entries",
            "Log entries read and verified against a signed tree head",
            ["log"],
            registry=r,
        )
        self.tree_size = Gauge(
            "pinwatch_ct_tree_size",
            "Size of the log's latest verified tree head",
            ["log"],
            registry=r,
        )
        self.next_index = Gauge(
            "pinwatch_ct_next_index",
            "Index of the next entry to read (entries before it are done)",
            ["log"],
            registry=r,
        )
        self.poll_success = Gauge(
            "pinwatch_ct_poll_success",
            "1 when the last poll of the log succeeded, 0 when it failed",
            ["log"],
            registry=r,
        )
        self.last_success = Gauge(
            "pinwatch_ct_last_success_timestamp_seconds",
            "Unix time of the last successful poll of the log",
            ["log"],
            registry=r,
        )
        self.errors = Counter(
            "pinwatch_ct_errors",
            "Failed polls by reason (unreachable, http, bad_response, bad_signature, "
            "truncated_entry, bad_entry, inconsistent_tree)",
            ["log", "reason"],
            registry=r,
        )
