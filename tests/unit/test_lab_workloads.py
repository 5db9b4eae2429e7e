"""The workload programs on loopback (no root): flags, answers, bulk checksums."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.workloads import client, http_echo, payload, tcp_echo

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited early"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def _server(module: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", f"lab.workloads.{module}", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    return out.decode()


@pytest.fixture
def echo_server() -> Iterator[int]:
    port = _free_port()
    proc = _server("http_echo", "-text=Hello from v1", f"-listen=127.0.0.1:{port}")
    try:
        _wait_port(port, proc)
        yield port
    finally:
        _stop(proc)


@pytest.mark.parametrize(
    "argv",
    [
        ["-text=Hello from v1", "-listen=:8080"],
        ["--text", "Hello from v1", "--listen", ":8080"],
        ["--text=Hello from v1", "--listen=0.0.0.0:8080"],
    ],
)
def test_http_echo_takes_both_flag_styles(argv: list[str]) -> None:
    config = http_echo.parse_args(argv)
    assert (config.text, config.host, config.port) == ("Hello from v1", "0.0.0.0", 8080)


def test_http_echo_rejects_a_bad_listen_address() -> None:
    with pytest.raises(SystemExit):
        http_echo.parse_args(["-listen=nonsense"])


def test_tcp_echo_flags() -> None:
    config = tcp_echo.parse_args(["--listen", "127.0.0.1:9000", "--mode", "sink"])
    assert (config.host, config.port, config.mode) == ("127.0.0.1", 9000, "sink")


def test_http_echo_answers_text_and_the_client_address(echo_server: int) -> None:
    with socket.create_connection(("127.0.0.1", echo_server), timeout=5) as sock:
        local = f"{sock.getsockname()[0]}:{sock.getsockname()[1]}"
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK")
    assert f"X-Client-Addr: {local}" in head
    assert body == f"Hello from v1\nclient: {local}\n"


def test_http_echo_keeps_connections_alive(echo_server: int) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", echo_server, timeout=5)
    try:
        bodies = [client.http_get(f"http://127.0.0.1:{echo_server}/", 5, conn)[1] for _ in range(3)]
    finally:
        conn.close()
    assert len(set(bodies)) == 1  # one connection: the same client port every time
    status, body, _ = client.http_get(f"http://127.0.0.1:{echo_server}/health", 5)
    assert (status, body) == (200, "ok\n")


def test_client_http_summary(echo_server: int, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{echo_server}/"
    assert client.main(["http", url, "--count", "5", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == 5
    assert summary["statuses"] == {"200": 5}
    assert all(b.startswith("Hello from v1\nclient: 127.0.0.1:") for b in summary["bodies"])


def test_client_reports_failure_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    rc = client.main(["http", f"http://127.0.0.1:{port}/", "--count", "2", "--json"])
    assert rc == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["failed"] == 2
    assert "ConnectionRefusedError" in summary["errors"][0]


@pytest.mark.parametrize("mode", ["sink", "echo"])
def test_bulk_transfer_checksums_match(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    proc = _server("tcp_echo", "--listen", f"127.0.0.1:{port}", "--mode", mode)
    size = 3_000_001
    try:
        _wait_port(port, proc)
        # the readiness probe above was one (empty) connection; the transfer is the next
        rc = client.main(["bulk", f"127.0.0.1:{port}", "--bytes", str(size), "--mode", mode])
    finally:
        log = _stop(proc)
    result = json.loads(capsys.readouterr().out)
    assert rc == 0, result
    assert result["match"] is True
    assert result["sha256_sent"] == payload.expected_sha256(size)
    assert f"bytes={size} sha256={payload.expected_sha256(size)}" in log


def test_payload_is_deterministic_and_exact() -> None:
    size = payload.BLOCK_SIZE * 2 + 17
    data = b"".join(payload.chunks(size))
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == payload.expected_sha256(size)
    assert payload.expected_sha256(size, "other") != payload.expected_sha256(size)
    assert payload.expected_sha256(0) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    ("text", "want"),
    [(":80", ("0.0.0.0", 80)), ("10.0.0.1:9000", ("10.0.0.1", 9000)), ("8080", ("0.0.0.0", 8080))],
)
def test_parse_hostport(text: str, want: tuple[str, int]) -> None:
    assert payload.parse_hostport(text) == want


@pytest.mark.parametrize("text", ["x:y", ":0", ":70000"])
def test_parse_hostport_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        payload.parse_hostport(text)


def test_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert client.percentile(values, 50) == 50.0
    assert client.percentile(values, 99) == 99.0
    assert client.percentile([], 50) == 0.0
    assert client.percentile([3.0], 99) == 3.0


def test_http_echo_faults_on_demand(echo_server: int, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{echo_server}"
    status, body, _ = client.http_get(f"{url}/__lab/fault?status=503&delay_ms=50", 5, method="POST")
    assert (status, body) == (200, "status=503 delay_ms=50\n")
    start = time.monotonic()
    status, body, _ = client.http_get(f"{url}/", 5)
    assert status == 503 and body.startswith("Hello from v1")
    assert time.monotonic() - start >= 0.05
    assert client.http_get(f"{url}/health", 5)[0] == 200  # probes are not faulted
    assert client.http_get(f"{url}/__lab/fault?status=99", 5, method="POST")[0] == 400
    assert client.http_get(f"{url}/__lab/fault", 5, method="POST")[1] == "status=200 delay_ms=0\n"
    assert client.http_get(f"{url}/", 5)[0] == 200


def test_http_echo_faults_are_set_from_loopback_only() -> None:
    _, status = http_echo._fault_request(http_echo.Faults(), "POST", "status=500", "10.0.0.2:5")
    assert status.startswith("403")


def test_client_concurrency_methods_headers(
    echo_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = client.main(
        [
            "http",
            f"http://127.0.0.1:{echo_server}/x?y=1",
            "--count",
            "40",
            "--concurrency",
            "8",
            "-X",
            "POST",
            "-H",
            "end-user: jason",
            "--data",
            "hi",
            "--report-header",
            "x-client-addr",
            "--json",
        ]
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary["ok"] == 40 and summary["statuses"] == {"200": 40}
    assert sum(summary["headers"]["x-client-addr"].values()) == 40
