"""A client for the lab's servers: HTTP requests and bulk transfers with checksums.

    python -m lab.workloads.client http http://backend:8080/ --count 10 --json
    python -m lab.workloads.client bulk 10.244.2.2:9000 --bytes 50000000 --mode sink

``http`` prints each answer (or, with ``--json``, one summary: counts per status and per
body, failures, latency percentiles). ``bulk`` sends a deterministic stream
(:mod:`lab.workloads.payload`) to a ``tcp_echo`` server and prints one JSON line with
the SHA-256 sent and the one the other end saw (echoed back, or reported by a sink).
The exit code is 0 only when every request succeeded / the checksums match.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import socket
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lab.workloads import payload

RECV_SIZE = 256 * 1024


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = math.ceil(pct / 100 * len(ordered))
    return ordered[max(0, min(len(ordered), rank) - 1)]


def http_get(
    url: str, timeout: float, conn: http.client.HTTPConnection | None = None
) -> tuple[int, str, dict[str, str]]:
    """One GET; returns (status, body, headers). Uses ``conn`` when given (keep-alive)."""
    parts = urllib.parse.urlsplit(url)
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/", headers={"User-Agent": "ambient-lab-client"})
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        if own:
            conn.close()


def run_http(args: argparse.Namespace) -> int:
    """``count`` GETs of ``url``, each on a new connection unless ``--keepalive``."""
    statuses: Counter[int] = Counter()
    bodies: Counter[str] = Counter()
    errors: list[str] = []
    latencies: list[float] = []
    deadline = time.monotonic() + args.deadline
    parts = urllib.parse.urlsplit(args.url)
    conn = (
        http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=args.timeout)
        if args.keepalive
        else None
    )
    for _ in range(args.count):
        if time.monotonic() >= deadline:
            errors.append("deadline reached")
            break
        start = time.monotonic()
        try:
            status, body, _headers = http_get(args.url, args.timeout, conn)
        except (OSError, http.client.HTTPException) as err:
            errors.append(f"{type(err).__name__}: {err}")
            if conn is not None:
                conn.close()
        else:
            latencies.append((time.monotonic() - start) * 1000)
            statuses[status] += 1
            bodies[body] += 1
            if not args.json:
                print(body, end="" if body.endswith("\n") else "\n", flush=True)
        if args.interval:
            time.sleep(args.interval)
    if conn is not None:
        conn.close()
    ok = sum(n for s, n in statuses.items() if 200 <= s < 400)
    if args.json:
        summary: dict[str, Any] = {
            "url": args.url,
            "count": args.count,
            "ok": ok,
            "failed": args.count - ok,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "bodies": dict(bodies.most_common()),
            "errors": errors[:10],
            "latency_ms": {
                "p50": round(percentile(latencies, 50), 3),
                "p99": round(percentile(latencies, 99), 3),
                "max": round(max(latencies, default=0.0), 3),
            },
        }
        print(json.dumps(summary), flush=True)
    else:
        for message in errors[:10]:
            print(f"error: {message}", file=sys.stderr)
    return 0 if ok == args.count else 1


def run_bulk(args: argparse.Namespace) -> int:
    """Sends ``--bytes`` of the payload stream; compares digests with the other end."""
    host, port = payload.parse_hostport(args.target, default_host="127.0.0.1")
    start = time.monotonic()
    sent = hashlib.sha256()
    got = hashlib.sha256()
    received = 0
    send_error: list[BaseException] = []
    with socket.create_connection((host, port), timeout=args.timeout) as sock:

        def sender() -> None:
            try:
                for piece in payload.chunks(args.bytes, args.seed):
                    sock.sendall(piece)
                    sent.update(piece)
                sock.shutdown(socket.SHUT_WR)
            except OSError as err:
                send_error.append(err)

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        reply = bytearray()
        while True:
            data = sock.recv(RECV_SIZE)
            if not data:
                break
            if args.mode == "echo":
                got.update(data)
                received += len(data)
            else:
                reply += data
        thread.join(args.timeout)
    seconds = time.monotonic() - start
    result: dict[str, Any] = {
        "target": args.target,
        "mode": args.mode,
        "bytes": args.bytes,
        "sha256_sent": sent.hexdigest(),
        "seconds": round(seconds, 4),
        "mbit_per_s": round(args.bytes * 8 / seconds / 1e6, 1) if seconds > 0 else 0.0,
    }
    if args.mode == "echo":
        result["bytes_received"] = received
        result["sha256_received"] = got.hexdigest()
        match = received == args.bytes and got.hexdigest() == sent.hexdigest()
    else:
        try:
            server = json.loads(bytes(reply).decode() or "{}")
        except ValueError:
            server = {"raw": bytes(reply[:200]).decode(errors="replace")}
        result["server"] = server
        match = server.get("bytes") == args.bytes and server.get("sha256") == sent.hexdigest()
    if send_error:
        result["error"] = repr(send_error[0])
        match = False
    result["match"] = match
    print(json.dumps(result), flush=True)
    return 0 if match else 1


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Subcommands ``http`` and ``bulk``."""
    parser = argparse.ArgumentParser(prog="client", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("http", help="GET a URL several times")
    h.add_argument("url")
    h.add_argument("--count", "-n", type=int, default=1)
    h.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    h.add_argument("--deadline", type=float, default=120.0, help="for all requests, seconds")
    h.add_argument("--interval", type=float, default=0.0, help="pause between requests")
    h.add_argument("--keepalive", action="store_true", help="reuse one connection")
    h.add_argument("--json", action="store_true", help="print one JSON summary")
    b = sub.add_parser("bulk", help="send N bytes to a tcp_echo server and compare digests")
    b.add_argument("target", help="host:port of a tcp_echo server")
    b.add_argument("--bytes", type=int, default=10_000_000)
    b.add_argument("--mode", choices=("echo", "sink"), default="sink")
    b.add_argument("--seed", default=payload.DEFAULT_SEED)
    b.add_argument("--timeout", type=float, default=30.0, help="socket timeout, seconds")
    ns = parser.parse_args(list(argv))
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "http":
        return run_http(args)
    return run_bulk(args)


if __name__ == "__main__":
    sys.exit(main())
