"""The CT watcher: per poll and per log, verify the signed tree head, read at most
ct_max_entries_per_poll entries after the last verified one, prove them against the tree head
(extend the stored frontier, recompute the root, and check it equals the head or is consistent
with it), then judge every certificate and precertificate naming a policy host. A finding is
raised only from verified entries; state advances only after verification, so a failed poll is
retried from the same place.

"No shipped app version pins" = neither the leaf's key nor a proven issuer's key is in the
host's pin set (every app version pins the policy's set; see prober.probe)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import httpx

from pinwatch.logs import event
from pinwatch.policy import HostPolicy, Policy
from pinwatch.settings import Settings
from prober.ct import CtError, merkle
from prober.ct.client import LogClient, TreeHead
from prober.ct.entries import BadEntry, LoggedCertificate, parse_entry
from prober.ct.loglist import Log
from prober.ct.state import Finding, LogState, StateStore
from prober.ct.tls import Truncated
from prober.metrics import CtMetrics

log = logging.getLogger("pinwatch.ct")


class Watcher:
    def __init__(
        self,
        policy: Policy,
        settings: Settings,
        logs: list[Log],
        *,
        metrics: CtMetrics | None = None,
    ) -> None:
        self.policy = policy
        self.settings = settings
        self.logs = logs
        self.metrics = metrics or CtMetrics(policy)
        state_dir = settings.ct_state_dir or settings.data_dir / "ct"
        self.store = StateStore(state_dir)
        self.findings = self.store.load_findings()
        self._publish()

    async def poll_all(self) -> dict[str, CtError | None]:
        """One poll of every log; the error of each log that failed (None: it succeeded)."""
        async with httpx.AsyncClient(timeout=self.settings.ct_timeout_seconds) as http:
            outcomes = await asyncio.gather(
                *(
                    self._poll_one(LogClient(lg, http, self.settings.ct_max_response_bytes))
                    for lg in self.logs
                )
            )
        self._publish()
        return dict(zip((lg.url for lg in self.logs), outcomes, strict=True))

    async def _poll_one(self, client: LogClient) -> CtError | None:
        url = client.log.url
        m = self.metrics
        try:
            await self.poll(client)
        except CtError as exc:
            m.errors.labels(url, exc.reason).inc()
            m.poll_success.labels(url).set(0)
            event(
                log, "ct_poll_failed", logging.WARNING, log=url, reason=exc.reason, error=str(exc)
            )
            return exc
        m.poll_success.labels(url).set(1)
        m.last_success.labels(url).set(time.time())
        return None

    async def poll(self, client: LogClient) -> int:
        """Read and verify the next batch of one log; the number of entries read."""
        lg, s, m = client.log, self.settings, self.metrics
        head = await client.get_sth()
        state = self.store.load_log(lg.state_name)
        if state is None:
            start = 0 if s.ct_start_at_beginning else head.tree_size
            state = LogState(lg.url, start, [] if start == 0 else None)
            event(
                log,
                "ct_log_new",
                log=lg.url,
                description=lg.description,
                start=start,
                tree_size=head.tree_size,
            )
        if head.tree_size < state.tree_size:
            raise CtError(
                "inconsistent_tree",
                f"{lg.url}: the signed tree shrank from {state.tree_size} to {head.tree_size} "
                "entries: a log only grows",
            )
        m.tree_size.labels(lg.url).set(head.tree_size)
        if state.next_index >= head.tree_size:
            state.tree_size, state.root_hash = head.tree_size, head.root_hash
            self.store.save_log(lg.state_name, state)
            m.next_index.labels(lg.url).set(state.next_index)
            return 0
        end = min(head.tree_size, state.next_index + s.ct_max_entries_per_poll)
        raw = await self._fetch(client, state.next_index, end)
        leaves = [merkle.leaf_hash(leaf) for leaf, _ in raw]
        certificates = [self._parse(lg, state.next_index + i, *e) for i, e in enumerate(raw)]
        frontier = state.frontier
        if frontier is None:
            frontier = await self._locate(client, head, state.next_index, leaves[0])
        for i, leaf in enumerate(leaves):
            frontier = merkle.append(frontier, state.next_index + i, leaf)
        await self._prove(client, head, end, merkle.root(frontier))
        # Verified: judge, then move on.
        for certificate in certificates:
            self._judge(lg, certificate)
        self.store.save_findings(self.findings)
        previous = state.next_index
        state.next_index, state.frontier = end, frontier
        state.tree_size, state.root_hash = head.tree_size, head.root_hash
        self.store.save_log(lg.state_name, state)
        m.entries.labels(lg.url).inc(end - previous)
        m.next_index.labels(lg.url).set(end)
        event(
            log,
            "ct_entries_verified",
            log=lg.url,
            start=previous,
            end=end,
            tree_size=head.tree_size,
            behind=head.tree_size - end,
        )
        return end - previous

    async def _fetch(self, client: LogClient, start: int, end: int) -> list[tuple[bytes, bytes]]:
        """Entries [start, end): a log returns at most what it likes per request, so ask
        again from where it stopped, ct_entries_per_request at a time."""
        out: list[tuple[bytes, bytes]] = []
        step = self.settings.ct_entries_per_request
        while start + len(out) < end:
            first = start + len(out)
            got = await client.get_entries(first, min(end, first + step) - 1)
            if not got:
                raise CtError(
                    "bad_response", f"{client.log.url}: get-entries from {first} returned nothing"
                )
            out.extend(got)
        return out

    def _parse(self, lg: Log, index: int, leaf: bytes, extra: bytes) -> LoggedCertificate:
        try:
            return parse_entry(index, leaf, extra)
        except Truncated as exc:
            message = f"{lg.url}: entry {index} is truncated: {exc}"
            raise CtError("truncated_entry", message) from None
        except BadEntry as exc:
            raise CtError("bad_entry", f"{lg.url}: {exc}") from None

    async def _locate(
        self, client: LogClient, head: TreeHead, index: int, leaf: bytes
    ) -> list[bytes]:
        """Started mid-log: the frontier of [0, index) from the audit path of entry `index`."""
        at, path = await client.get_proof_by_hash(leaf, head.tree_size)
        frontier = merkle.frontier_from_inclusion(leaf, index, head.tree_size, path, head.root_hash)
        if at != index or frontier is None:
            raise CtError(
                "inconsistent_tree",
                f"{client.log.url}: entry {index} is not in the signed tree of size "
                f"{head.tree_size} at that index (its inclusion proof does not verify)",
            )
        return frontier

    async def _prove(self, client: LogClient, head: TreeHead, size: int, root: bytes) -> None:
        if size == head.tree_size:
            ok = root == head.root_hash
        else:
            proof = await client.get_consistency(size, head.tree_size)
            ok = merkle.verify_consistency(size, head.tree_size, root, head.root_hash, proof)
        if not ok:
            raise CtError(
                "inconsistent_tree",
                f"{client.log.url}: the entries read up to {size} do not hash to the signed "
                f"tree of size {head.tree_size}: the log served entries it did not sign",
            )

    def _hosts(self, certificate: LoggedCertificate) -> list[HostPolicy]:
        found: dict[str, HostPolicy] = {}
        for name in certificate.names:
            for host in self.policy.hosts_for_certificate_name(name):
                found.setdefault(host.host, host)
        return list(found.values())

    def _judge(self, lg: Log, certificate: LoggedCertificate) -> None:
        hosts = self._hosts(certificate)
        if hosts:
            self.metrics.matched.labels(lg.url).inc()
        for host in hosts:
            pins = [certificate.pin, *certificate.issuer_pins]
            if _pinned(host, pins):
                continue
            finding = Finding(
                host=host.host,
                log=lg.url,
                index=certificate.index,
                kind=certificate.kind,
                not_before=certificate.not_before.isoformat(),
                not_after=certificate.not_after.isoformat(),
                pin=certificate.pin,
                pins=pins,
                names=list(certificate.names),
            )
            if any(f.key == finding.key for f in self.findings):
                continue
            self.findings.append(finding)
            self.findings = self.findings[-self.settings.ct_max_findings :]
            self.metrics.unpinned_found.labels(host.host).inc()
            event(
                log,
                "ct_unpinned_certificate",
                logging.WARNING,
                finding=f"a {certificate.kind} for {host.host} was issued with a key no shipped "
                "app version pins",
                host=host.host,
                log=lg.url,
                index=certificate.index,
                not_before=finding.not_before,
                not_after=finding.not_after,
                pin=certificate.pin,
                names=list(certificate.names),
                phase=str(host.phase),
            )

    def current_findings(self) -> list[Finding]:
        """Findings that still stand: the certificate is valid and the policy still lacks
        its key (a policy that pinned it since, or an expiry, closes a finding)."""
        now = dt.datetime.now(dt.UTC)
        out = []
        for f in self.findings:
            host = self.policy.host(f.host)
            if host is None or _pinned(host, f.pins):
                continue
            if dt.datetime.fromisoformat(f.not_after) > now:
                out.append(f)
        return out

    def _publish(self) -> None:
        gauge = self.metrics.unpinned
        gauge.clear()
        for f in self.current_findings():
            gauge.labels(f.host, f.log, str(f.index), f.not_before, f.pin).set(1)

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.ct_poll_interval_seconds
        while not stop.is_set():
            started = time.monotonic()
            await self.poll_all()
            try:
                await asyncio.wait_for(
                    stop.wait(), timeout=max(0.0, interval - (time.monotonic() - started))
                )
            except TimeoutError:
                pass  # the next poll is due


def _pinned(host: HostPolicy, pins: list[str]) -> bool:
    keys = {p.sha256 for p in host.pins}
    return any(p in keys for p in pins)
