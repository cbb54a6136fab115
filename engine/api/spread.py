"""The event loop of a ``nurture serve --workers N`` HTTP process: each process listens on a
socket of its own, the kernel spreading connections over them.

uvicorn binds one socket in the supervising process and every worker listens on it. uvloop (as
asyncio) accepts every waiting connection each time it wakes, and all the processes wake for
each one, so the first to run takes a whole burst: eight keep-alive clients connecting at once
landed 8/0 as often as 4/4, one process doing all the work. Here each worker listens on its own
socket bound to the same address with ``SO_REUSEPORT``: Linux hands each new connection to one
listening socket by a hash of its addresses, so a burst is split at random among the processes
(eight over two: 4/4, 5/3 or 6/2 more than nine times in ten), only the process chosen wakes,
and it accepts in uvloop's own C code as before. (macOS and the BSDs bind the same way but give
each connection to one of the sockets, as one shared socket did.) The supervisor's socket
stays bound but never listens, keeping the address the workers share (a plain bind by another
program is refused); a connection queued on a worker that dies is lost with its socket, as with
any ``SO_REUSEPORT`` server.

uvicorn takes this loop by its ``loop`` option (an import string of a loop factory); its worker
servers call ``create_server`` with the supervisor's socket, which this loop replaces by the
worker's own."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvloop


def own_socket(shared: socket.socket) -> socket.socket:
    """A socket bound to ``shared``'s address that this process alone listens on, one of the
    address's ``SO_REUSEPORT`` group."""
    own = socket.socket(shared.family, shared.type)
    try:
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        own.bind(shared.getsockname())
    except OSError:
        own.close()
        raise
    return own


class SpreadingLoop(uvloop.Loop):
    """uvloop, serving a socket it is given (uvicorn's workers) on one of its own."""

    async def create_server(  # type: ignore[override]
        self, protocol_factory: Any, host: Any = None, port: Any = None, **options: Any
    ) -> asyncio.AbstractServer:
        if options.get("sock") is not None:
            options["sock"] = own_socket(options["sock"])
        return await super().create_server(protocol_factory, host, port, **options)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop factory uvicorn is given (``loop="engine.api.spread:new_event_loop"``)."""
    return SpreadingLoop()
