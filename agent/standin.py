"""A stand-in for ztunnel's capture listeners, for tests and benchmarks of the capture path.

``python -m agent.standin --port 15001=relay --port 15006=report --port 15008=report``
listens, in the node namespace, on the wildcard address with ``IP_TRANSPARENT`` (what
ztunnel's listeners do), so the capture programs can hand it pod traffic. Per port:

- ``report``: answers one JSON line ``{"listener", "original_dst", "peer"}`` (the
  original destination is the accepted socket's local address), then echoes;
- ``relay``: connects to the original destination *from the client's address*
  (``IP_TRANSPARENT`` bind, as ztunnel does toward a local pod) and copies bytes both
  ways; the replies of that upstream connection only reach it through the programs'
  established-socket match. With ``--no-spoof`` it connects from the node's address.
- ``relay-nat``: the same relay for connections redirected by iptables ``REDIRECT``
  (the original destination comes from ``SO_ORIGINAL_DST``; it never spoofs), the
  baseline the capture benchmark compares eBPF capture with.

Every accepted connection is logged as one JSON line on stdout. It is no proxy: no
mTLS, no policy. It exists so capture can be tested and measured on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import socket
import sys
from collections.abc import Sequence

IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
SO_ORIGINAL_DST = 80
MODES = ("report", "relay", "relay-nat")
CHUNK = 256 * 1024
CONNECT_TIMEOUT = 5.0


def transparent_listener(port: int) -> socket.socket:
    """A listening socket on 0.0.0.0:``port`` that may own non-local addresses."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    total = 0
    try:
        while chunk := await reader.read(CHUNK):
            total += len(chunk)
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass
    return total


async def _report(
    port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> dict[str, object]:
    local = writer.get_extra_info("sockname")
    peer = writer.get_extra_info("peername")
    line = {
        "listener": port,
        "original_dst": f"{local[0]}:{local[1]}",
        "peer": f"{peer[0]}:{peer[1]}",
    }
    writer.write((json.dumps(line) + "\n").encode())
    await writer.drain()
    echoed = await _pipe(reader, writer)
    return {**line, "mode": "report", "bytes": echoed}


def original_dst_nat(sock: socket.socket) -> tuple[str, int]:
    """The destination before iptables REDIRECT rewrote it (``SO_ORIGINAL_DST``)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = int.from_bytes(raw[2:4], "big")
    return socket.inet_ntoa(raw[4:8]), port


async def _relay(
    port: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    spoof: bool = True,
    nat: bool = False,
) -> dict[str, object]:
    sock = writer.get_extra_info("socket")
    local = original_dst_nat(sock) if nat else writer.get_extra_info("sockname")
    peer = writer.get_extra_info("peername")
    record: dict[str, object] = {
        "listener": port,
        "original_dst": f"{local[0]}:{local[1]}",
        "peer": f"{peer[0]}:{peer[1]}",
        "mode": "relay-nat" if nat else "relay",
    }
    upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if spoof and not nat:
        upstream.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        upstream.bind((peer[0], 0))
    upstream.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(upstream, (local[0], local[1])), CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as err:
        upstream.close()
        record["error"] = f"upstream connect: {err}"
        return record
    up_reader, up_writer = await asyncio.open_connection(sock=upstream)
    record["upstream_local"] = "{}:{}".format(*up_writer.get_extra_info("sockname"))
    sent, received = await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    up_writer.close()
    record.update(sent=sent, received=received)
    return record


async def serve(modes: dict[int, str], *, spoof: bool = True, quiet: bool = False) -> None:
    """Listens on every port of ``modes`` until cancelled."""
    handlers = {
        "report": _report,
        "relay": functools.partial(_relay, spoof=spoof),
        "relay-nat": functools.partial(_relay, nat=True),
    }
    servers = []
    for port, mode in modes.items():
        handler = handlers[mode]

        async def on_client(
            reader: asyncio.StreamReader,
            writer: asyncio.StreamWriter,
            port: int = port,
            handler: object = handler,
        ) -> None:
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                record = await handler(port, reader, writer)  # type: ignore[operator]
            except (ConnectionError, OSError) as err:
                record = {"listener": port, "error": str(err)}
            finally:
                writer.close()
            if not quiet:
                print(json.dumps(record), flush=True)

        servers.append(await asyncio.start_server(on_client, sock=transparent_listener(port)))
    print(json.dumps({"listening": sorted(modes)}), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def parse_modes(specs: Sequence[str]) -> dict[int, str]:
    """``["15001=relay", "15006"]`` -> ``{15001: "relay", 15006: "report"}``."""
    modes: dict[int, str] = {}
    for spec in specs:
        port, _, mode = spec.partition("=")
        mode = mode or "report"
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode!r} in {spec!r} ({', '.join(MODES)})")
        modes[int(port)] = mode
    return modes


def main(argv: Sequence[str] | None = None) -> None:
    """Command line of the stand-in."""
    parser = argparse.ArgumentParser(prog="python -m agent.standin", description=__doc__)
    parser.add_argument(
        "--port", action="append", default=[], help="PORT[=" + "|".join(MODES) + "]"
    )
    parser.add_argument("--no-spoof", action="store_true", help="relay from the node's address")
    parser.add_argument("--quiet", action="store_true", help="no record per connection")
    args = parser.parse_args(argv)
    modes = parse_modes(args.port or ["15001=report", "15006=report", "15008=report"])
    try:
        asyncio.run(serve(modes, spoof=not args.no_spoof, quiet=args.quiet))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
