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
    url: str,
    timeout: float,
    conn: http.client.HTTPConnection | None = None,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, str, dict[str, str]]:
    """One request (GET unless told); returns (status, body, headers). Uses ``conn``
    when given (keep-alive)."""
    parts = urllib.parse.urlsplit(url)
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {"User-Agent": "ambient-lab-client", **(headers or {})}
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        return resp.status, text, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        if own:
            conn.close()


def _header_args(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, rest = value.partition(":")
        if not sep:
            raise SystemExit(f"--header {value!r} is not NAME: VALUE")
        out[key.strip()] = rest.strip()
    return out


class _Tally:
    """What the requests of one run saw (shared by the worker threads)."""

    def __init__(self, report_headers: Sequence[str]) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.bodies: Counter[str] = Counter()
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self.report = [h.lower() for h in report_headers]
        self.headers: dict[str, Counter[str]] = {h: Counter() for h in self.report}

    def answer(self, status: int, body: str, headers: dict[str, str], ms: float) -> None:
        with self.lock:
            self.latencies.append(ms)
            self.statuses[status] += 1
            self.bodies[body] += 1
            for name in self.report:
                if name in headers:
                    self.headers[name][headers[name]] += 1

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


def run_http(args: argparse.Namespace) -> int:
    """``count`` requests to ``url`` (by ``--concurrency`` threads), each on a new
    connection unless ``--keepalive``."""
    tally = _Tally(args.report_header)
    deadline = time.monotonic() + args.deadline
    parts = urllib.parse.urlsplit(args.url)
    headers = _header_args(args.header)
    body = args.data.encode() if args.data is not None else None
    method = args.method or ("POST" if body is not None else "GET")
    remaining = [args.count]
    take = threading.Lock()

    def worker() -> None:
        conn = (
            http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=args.timeout)
            if args.keepalive
            else None
        )
        while True:
            with take:
                if remaining[0] <= 0:
                    break
                remaining[0] -= 1
            if time.monotonic() >= deadline:
                tally.error("deadline reached")
                break
            start = time.monotonic()
            try:
                status, text, got = http_get(
                    args.url, args.timeout, conn, method=method, headers=headers, body=body
                )
            except (OSError, http.client.HTTPException) as err:
                tally.error(f"{type(err).__name__}: {err}")
                if conn is not None:
                    conn.close()
            else:
                tally.answer(status, text, got, (time.monotonic() - start) * 1000)
                if args.stamp:
                    first = text.splitlines()[0] if text else ""
                    print(f"{time.time():.3f} {status} {first}", flush=True)
                elif not args.json:
                    print(text, end="" if text.endswith("\n") else "\n", flush=True)
            if args.interval:
                time.sleep(args.interval)
        if conn is not None:
            conn.close()

    threads = [
        threading.Thread(target=worker, daemon=True) for _ in range(max(1, args.concurrency))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + args.timeout + 1)
    statuses, latencies = tally.statuses, tally.latencies
    ok = sum(n for s, n in statuses.items() if 200 <= s < 400)
    if args.json:
        summary: dict[str, Any] = {
            "url": args.url,
            "count": args.count,
            "ok": ok,
            "failed": args.count - ok,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "bodies": dict(tally.bodies.most_common()),
            "errors": tally.errors[:10],
            "latency_ms": {
                "p50": round(percentile(latencies, 50), 3),
                "p99": round(percentile(latencies, 99), 3),
                "max": round(max(latencies, default=0.0), 3),
            },
        }
        if tally.report:
            summary["headers"] = {k: dict(v) for k, v in tally.headers.items()}
        print(json.dumps(summary), flush=True)
    else:
        for message in tally.errors[:10]:
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
    h = sub.add_parser("http", help="GET (or --method) a URL several times")
    h.add_argument("url")
    h.add_argument("--method", "-X", default=None, help="GET unless --data is given (POST)")
    h.add_argument("--header", "-H", action="append", default=[], help="NAME: VALUE")
    h.add_argument("--data", "-d", default=None, help="request body")
    h.add_argument("--concurrency", "-c", type=int, default=1, help="parallel clients")
    h.add_argument(
        "--report-header",
        action="append",
        default=[],
        help="count the values of this response header (in --json)",
    )
    h.add_argument("--count", "-n", type=int, default=1)
    h.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    h.add_argument("--deadline", type=float, default=120.0, help="for all requests, seconds")
    h.add_argument("--interval", type=float, default=0.0, help="pause between requests")
    h.add_argument("--keepalive", action="store_true", help="reuse one connection")
    h.add_argument("--json", action="store_true", help="print one JSON summary")
    h.add_argument(
        "--stamp", action="store_true", help="print '<unix time> <status> <first line>' per answer"
    )
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
