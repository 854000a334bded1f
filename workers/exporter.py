"""The exporter role: the tree's one Prometheus scrape endpoint, in a process of its own.

Every role writes its metrics to files in the tree's multiprocess directory; this role
serves them merged (`kick_monitor.metrics_server`). It runs apart from the supervisor so
that no HTTP server thread lives in the process that forks, and so its listening socket
exists only here (bound after fork). A port that cannot be bound is a configuration
error: the role exits `EX_USAGE` and the supervisor stops the service with that code.
"""

from __future__ import annotations

import logging
from typing import Any

from kick_monitor.exitcodes import EX_USAGE
from kick_monitor.metrics_server import start_metrics_server
from kick_monitor.role import Role, RoleFatal

log = logging.getLogger("kick_monitor.exporter")


class Exporter(Role):
    """Serves /metrics until told to stop; see the module docstring."""

    kind = "exporter"
    server: Any = None

    def boot(self) -> None:
        host, port = self.settings.metrics_host, self.settings.metrics_port
        try:
            self.server = start_metrics_server(host, port)
        except OSError as exc:
            raise RoleFatal(EX_USAGE, f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        log.info("serving metrics on http://%s:%d/metrics", host, port)

    def step(self) -> None:
        self.wait([], [], 0.5)

    def finish(self) -> int:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        return 0
