"""websim: a deterministic simulated web on loopback for testing crawlers.

from services.crawler.websim import SimConfig, WebSim
sim = WebSim(SimConfig(hosts=200, seed=1))
with sim.run_in_thread() as port: ...            # or: async with sim.serve() as port
sim.entries()                                    # request log
sim.ground_truth(sim.seeds(200), max_depth=6)    # page ids a polite crawler fetches
"""

from services.crawler.websim.config import DEFAULT_USER_AGENT, ROBOTS_PARSE_LIMIT, ConfigError, SimConfig
from services.crawler.websim.sim import WebSim
from services.crawler.websim.truth import TrapReachable

__all__ = ["DEFAULT_USER_AGENT", "ROBOTS_PARSE_LIMIT", "ConfigError", "SimConfig", "TrapReachable", "WebSim"]
