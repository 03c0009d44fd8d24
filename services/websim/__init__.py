"""websim: a deterministic simulated web on loopback for testing crawlers.

from services.websim import SimConfig, WebSim, run_in_thread
sim = WebSim(SimConfig(hosts=200, seed=1))
with run_in_thread(sim) as port: ...            # or: async with serve(sim) as port
sim.entries()                                    # request log
sim.ground_truth(sim.seeds(200), max_depth=6)    # page ids a polite crawler fetches
"""

from services.websim.config import DEFAULT_USER_AGENT, ROBOTS_PARSE_LIMIT, ConfigError, SimConfig
from services.websim.server import run_in_thread, serve
from services.websim.sim import WebSim
from services.websim.truth import TrapReachable

__all__ = [
    "DEFAULT_USER_AGENT",
    "ROBOTS_PARSE_LIMIT",
    "ConfigError",
    "SimConfig",
    "TrapReachable",
    "WebSim",
    "run_in_thread",
    "serve",
]
