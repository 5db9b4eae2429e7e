"""The asyncio shell the lab's servers share: listen, serve until a signal, stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve_until_signalled(
    handler: Handler, host: str, port: int, banner: str, *, limit: int = 2**16
) -> None:
    """Accepts connections on ``host:port`` until SIGTERM or SIGINT, then closes."""
    server = await asyncio.start_server(
        handler, host=host, port=port, limit=limit, reuse_address=True, backlog=1024
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{banner} listening on {host}:{port}", flush=True)
    async with server:
        await stop.wait()
    print(f"{banner} stopped", flush=True)


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    """Closes a connection, ignoring a peer that already went away."""
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


def peer_of(writer: asyncio.StreamWriter) -> str:
    """``ip:port`` of the connection's peer, as this server saw it."""
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "unknown"


def run(main: Coroutine[Any, Any, None], prog: str) -> int:
    """Runs ``main`` (on uvloop when installed); a socket error is one line, exit code 1."""
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(main)
        else:
            uvloop.run(main)
    except OSError as err:
        print(f"{prog}: {err}", file=sys.stderr, flush=True)
        return 1
    return 0
