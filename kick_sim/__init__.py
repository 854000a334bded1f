"""kick_sim: a local Kick for any Kick client, on loopback only (it binds; it never connects out).

Kick's server side: a Pusher protocol 7 websocket (`App\\Events\\StreamerIsLive` and friends on
`channel.{id}` / `channel_{id}`), the official (`/public/v1/...`) and web (`/api/v2/...`) REST
APIs with OAuth, background chat noise from real captures (`kick_sim.data`), faults on demand,
and the ground truth of every transition. It depends on no Kick client, ours included.

In-process (tests)::

    with Simulator(SimConfig(port=0, http_port=0, control_port=0)) as sim:
        sim.create_streamers(10)
        client_connects_to(sim.pusher_url, sim.api_base_url)
        sim.set_live(sim.streamers()[0].slug, True)

As a process (benchmarks, the demo, any other client): `python -m kick_sim.cli --streamers 1000
--ready-file ready.json` (also `kick-monitor sim`) writes its URLs to the ready file and is driven
over its control API (`/control/...`); SIGTERM stops it.

Kick's Events API too (issue 16): the subscription API, `/public/v1/public-key`, and signed
webhook deliveries of every change to a loopback URL, with faults; see docs/simulator-webhooks.md.
"""

from kick_sim.config import SimConfig
from kick_sim.simulator import Simulator
from kick_sim.state import Broadcast, SimStreamer, Transition
from kick_sim.webhook_settings import DeliverySettings, WebhookFaults

__all__ = ["Broadcast", "DeliverySettings", "SimConfig", "SimStreamer", "Simulator", "Transition", "WebhookFaults"]
