"""A local stand-in for Kick: Pusher websocket (protocol 7), official and web REST APIs, OAuth.

Used by tests in-process (`Simulator`) and by benchmarks as a separate process
(`kick-monitor sim`, driven over its control API). It only ever binds; it never connects out.
"""

from kick_sim.config import SimConfig
from kick_sim.simulator import Simulator
from kick_sim.state import SimStreamer, Transition

__all__ = ["SimConfig", "SimStreamer", "Simulator", "Transition"]
