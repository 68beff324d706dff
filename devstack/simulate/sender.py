"""The async sender: posts simulated requests to ingest from each device's network address,
with bounded concurrency and bounded, Retry-After-honouring retries, and keeps a tally of what
was accepted so callers can compare it with what the pipeline counted."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from devstack.simulate.emit import Request

RETRY_STATUSES = {429, 503}


class NotLoopback(ValueError):
    pass


def require_loopback(url: str) -> str:
    """The simulator only ever talks to this machine."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return url.rstrip("/")
    try:
        if ipaddress.ip_address(host).is_loopback:
            return url.rstrip("/")
    except ValueError:
        pass
    raise NotLoopback(f"the simulator sends to loopback only; {url!r} is not a loopback URL")


@dataclass
class SendOutcomes:
    """What the simulator sent and how ingest answered (requests, statuses, accepted reports)."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  # final status per request
    retries: int = 0
    transport_errors: int = 0
    accepted: Counter[str] = field(default_factory=Counter)  # Request.expected of 202s
    lost: Counter[str] = field(default_factory=Counter)  # Request.expected never accepted
    first_failure_sent: float | None = None  # time.time() when a pin failure was first accepted
    # time.time() when a failure on a device that enforced was last accepted: once a kill
    # switch reached every device, this stops moving
    last_enforced_failure_sent: float | None = None
    devices_failing: set[str] = field(default_factory=set)

    @property
    def pin_failures(self) -> int:
        return self.accepted["pin:pin_mismatch"] + self.accepted["pin:chain_invalid"]

    @property
    def enforced_failures(self) -> int:
        return self.accepted["enforced:pin_mismatch"] + self.accepted["enforced:chain_invalid"]


class Sender:
    """`async with Sender(url) as s: await s.send(request)`; one HTTP client per source
    address, because a connection's source address is fixed when it is opened."""

    def __init__(
        self,
        base_url: str,
        *,
        concurrency: int = 16,
        timeout: float = 10.0,
        max_retries: int = 3,
        max_retry_wait: float = 5.0,
    ) -> None:
        self.base_url = require_loopback(base_url)
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.tally = SendOutcomes()
        self._limit = asyncio.Semaphore(concurrency)
        self._clients: dict[str, httpx.AsyncClient] = {}

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    def _client(self, source_address: str) -> httpx.AsyncClient:
        client = self._clients.get(source_address)
        if client is None:
            transport = httpx.AsyncHTTPTransport(local_address=source_address)
            client = httpx.AsyncClient(
                base_url=self.base_url, transport=transport, timeout=self.timeout
            )
            self._clients[source_address] = client
        return client

    async def send(self, request: Request) -> int:
        """Final HTTP status, or 0 when the request never got an answer."""
        async with self._limit:
            status = await self._send(request)
        tally = self.tally
        tally.requests += 1
        tally.statuses[status] += 1
        if status == 202:
            tally.accepted.update(request.expected)
            if request.has_pin_failure:
                tally.devices_failing.add(request.device)
                if tally.first_failure_sent is None:
                    tally.first_failure_sent = time.time()
            if request.has_enforced_failure:
                tally.last_enforced_failure_sent = time.time()
        else:
            tally.lost.update(request.expected)
        return status

    async def _send(self, request: Request) -> int:
        client = self._client(request.source_address)
        for attempt in range(self.max_retries + 1):
            try:
                response = await client.post(
                    request.path, content=request.body, headers=request.headers
                )
            except httpx.TransportError:
                self.tally.transport_errors += 1
                if attempt == self.max_retries:
                    return 0
                await asyncio.sleep(min(self.max_retry_wait, 0.2 * 2**attempt))
                continue
            if response.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                return response.status_code
            self.tally.retries += 1
            await asyncio.sleep(_retry_after(response, self.max_retry_wait, attempt))
        return 0  # pragma: no cover - the loop always returns


def _retry_after(response: httpx.Response, cap: float, attempt: int) -> float:
    try:
        return min(cap, max(0.0, float(response.headers.get("Retry-After", ""))))
    except ValueError:
        return min(cap, 0.2 * 2**attempt)
