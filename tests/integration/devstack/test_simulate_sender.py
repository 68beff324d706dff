"""The simulator's sender against a real HTTP server: per-network source addresses, Retry-After."""

from __future__ import annotations

import asyncio

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from devstack.localkafka import free_port
from devstack.simulate import (
    SCENARIOS,
    Sender,
    Simulation,
)


async def test_sender_sends_from_each_networks_address_and_honours_retry_after(population, chains):
    """A real HTTP server sees each simulated network as its own client prefix, and a 429
    with Retry-After is retried, not lost."""
    seen: list[str] = []
    refused: set[bytes] = set()
    app = FastAPI()

    @app.post("/v1/reports")
    async def reports(request: Request) -> JSONResponse:
        body = await request.body()
        if body not in refused:  # refuse each body once, then accept it
            refused.add(body)
            return JSONResponse({"error": "slow down"}, 429, headers={"Retry-After": "0"})
        seen.append(request.client.host)
        return JSONResponse({"accepted": len(orjson.loads(body)["reports"])}, 202)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    serving = asyncio.create_task(server.serve())
    for _ in range(250):  # up to 5 s for uvicorn to bind
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        async with Sender(f"http://127.0.0.1:{port}") as sender:
            sim = Simulation(population, SCENARIOS["steady"], chains, sender)
            # Devices report every 5 s at their own offsets: one interval reaches all of them.
            tally = await sim.run(5.5)
    finally:
        server.should_exit = True
        await serving
    assert tally.requests == sim.planned > 0
    assert tally.statuses == {202: tally.requests} and tally.retries == tally.requests
    assert set(seen) == {n.source_address for n in population.networks}
    assert tally.accepted["pin:ok"] > 0 and not tally.lost
