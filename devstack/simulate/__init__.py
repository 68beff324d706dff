"""The traffic generator: a simulated app population reporting pin validations and network
errors to ingest, driven by scenarios (steady state, rotations, interception, outages, a
flooding device, a bad release).

Pure parts (population, scenarios, payload builders, `generate`) need no I/O and serve
benchmarks and unit tests; `Sender` and `Simulation` put the traffic on the wire, and
`RemotePolicy` has the devices fetch, verify and obey their app's signed policy document.
"""

from devstack.simulate.emit import Chains, Request, device_requests
from devstack.simulate.population import (
    ClientFormat,
    Population,
    PopulationConfig,
    build_population,
)
from devstack.simulate.remote import RemotePolicy
from devstack.simulate.runner import Simulation, describe, generate
from devstack.simulate.scenarios import SCENARIOS, Scenario, get_scenario
from devstack.simulate.sender import Sender, SendOutcomes, require_loopback

__all__ = [
    "SCENARIOS",
    "Chains",
    "ClientFormat",
    "Population",
    "PopulationConfig",
    "RemotePolicy",
    "Request",
    "Scenario",
    "Sender",
    "Simulation",
    "SendOutcomes",
    "build_population",
    "describe",
    "device_requests",
    "generate",
    "get_scenario",
    "require_loopback",
]
