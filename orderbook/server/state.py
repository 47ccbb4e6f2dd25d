"""What one node holds while it serves, reachable from every handler as
`request.app.ctx.state`: set when the server starts, per app."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .handshake_limits import Gate
from .hub import Hub
from .settings import Settings

if TYPE_CHECKING:
    from .cluster import Cluster
    from .local_node import LocalNode


@dataclass
class ServerState:
    settings: Settings
    hub: Hub
    gate: Gate  # handshake and per-IP limits
    cluster: Cluster | None = None
    # A worker of `serve --workers N` without Redis: it follows the supervisor.
    local: LocalNode | None = None
    ready: bool = False
    # Told to stop: subscribers are being closed and no upgrade is taken (app.begin_drain).
    draining: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def serving(self) -> bool:
        """Ready to take subscribers: started, not draining, and in a cluster
        (or as a worker following its supervisor) caught up."""
        return (
            self.ready
            and not self.draining
            and (self.cluster is None or self.cluster.ready)
            and (self.local is None or self.local.ready)
        )
