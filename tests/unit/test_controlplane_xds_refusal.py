"""A refused xDS stream reaches the client with its real status, not a write error."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from controlplane.xds.server import refuse

SERVICE, METHOD = "test.Refusal", "Stream"


async def statuses(handler: Any, streams: int) -> list[str]:
    """Open streams that write three messages (every other one then half-closes, the
    rest stay open as ztunnel's do) and read; their final codes."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {METHOD: grpc.stream_stream_rpc_method_handler(handler)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    codes: list[str] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await channel.channel_ready()
            for n in range(streams):
                call = channel.stream_stream(f"/{SERVICE}/{METHOD}")()
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    for _ in range(3):
                        await call.write(b"subscribe" * 20)
                    if n % 2:
                        await call.done_writing()
                    await call.read()
                codes.append((await call.code()).name)
    finally:
        await server.stop(0)
    return codes


async def refused(_requests: Any, context: Any) -> None:
    await refuse(context, grpc.StatusCode.UNAUTHENTICATED, "no credential")


async def refused_silently(_requests: Any, context: Any) -> None:
    await refuse(context, grpc.StatusCode.PERMISSION_DENIED, "not yours")


def test_every_refused_stream_reports_unauthenticated() -> None:
    codes = asyncio.run(asyncio.wait_for(statuses(refused, 24), 60))
    assert codes == ["UNAUTHENTICATED"] * 24


def test_a_client_that_sends_nothing_is_refused_within_the_linger() -> None:
    async def main() -> tuple[str, str]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE, {METHOD: grpc.stream_stream_rpc_method_handler(refused_silently)}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.stream_stream(f"/{SERVICE}/{METHOD}")()
                code = await asyncio.wait_for(call.code(), 5)
                return code.name, await call.details() or ""
        finally:
            await server.stop(0)

    code, details = asyncio.run(main())
    assert (code, details) == ("PERMISSION_DENIED", "not yours")
