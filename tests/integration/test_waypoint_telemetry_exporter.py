"""The exporter process shell, without Envoy: a gRPC client streams access-log entries,
the cluster folder names the workloads, ``/metrics`` shows them (127.0.0.1, ~1 s)."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from tests.unit.test_waypoint_telemetry import _entry
from waypoint.telemetry import Exporter, ExporterConfig

PODS = """
apiVersion: v1
kind: Pod
metadata:
  name: frontend-7c9d-x1
  namespace: demo
  labels: {app: frontend, version: v1, pod-template-hash: 7c9d}
  ownerReferences: [{kind: ReplicaSet, name: frontend-7c9d, controller: true}]
spec: {serviceAccountName: frontend, nodeName: node1}
status: {podIP: 10.244.1.5, phase: Running}
---
apiVersion: v1
kind: Pod
metadata:
  name: backend-v1-5d9c-abcde
  namespace: demo
  labels: {app: backend, version: v1, pod-template-hash: 5d9c}
  ownerReferences: [{kind: ReplicaSet, name: backend-v1-5d9c, controller: true}]
spec: {serviceAccountName: backend, nodeName: node2}
status: {podIP: 10.244.2.7, phase: Running}
"""


def _get(url: str, accept: str = "") -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, "", ""


def _send(port: int, count: int) -> None:
    message = als_pb2.StreamAccessLogsMessage()
    message.identifier.log_name = "waypoint/demo/waypoint"
    for _ in range(count):
        message.http_logs.log_entry.append(_entry())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = als_pb2_grpc.AccessLogServiceStub(channel)
        stub.StreamAccessLogs(iter([message, message]), timeout=5)


@pytest.mark.timeout(30)
def test_exporter_serves_what_it_was_sent(tmp_path: Path) -> None:
    (tmp_path / "pods.yaml").write_text(PODS)
    asyncio.run(_scenario(tmp_path))


async def _scenario(folder: Path) -> None:
    exporter = Exporter(
        ExporterConfig(
            access_log_address=("127.0.0.1", 0),
            metrics_address=("127.0.0.1", 0),
            cluster_folder=folder,
            refresh_interval_s=0.1,
        )
    )
    await exporter.start()
    try:
        await asyncio.to_thread(_send, exporter.access_log_port, 3)
        base = f"http://127.0.0.1:{exporter.metrics_port}"
        status, content_type, text = await asyncio.to_thread(_get, f"{base}/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        line = next(x for x in text.splitlines() if x.startswith("istio_requests_total{"))
        for label in (
            'source_workload="frontend"',
            'source_version="v1"',
            'destination_workload="backend-v1"',
            'destination_principal="spiffe://cluster.local/ns/demo/sa/backend"',
            'reporter="waypoint"',
        ):
            assert label in line, line
        assert line.endswith(" 6.0"), line
        status, content_type, text = await asyncio.to_thread(
            _get, f"{base}/stats/prometheus", "application/openmetrics-text"
        )
        assert content_type.startswith("application/openmetrics-text")
        assert text.rstrip().endswith("# EOF")
        assert (await asyncio.to_thread(_get, f"{base}/nope"))[0] == 404

        # A relabelled pod is named anew after the next folder read.
        (folder / "pods.yaml").write_text(PODS.replace("version: v1,", "version: v9,"))
        deadline = time.monotonic() + 5
        while exporter.sink.view[0].by_ip["10.244.2.7"].version != "v9":
            assert time.monotonic() < deadline, "the folder was not re-read"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(_send, exporter.access_log_port, 1)
        text = (await asyncio.to_thread(_get, f"{base}/metrics"))[2]
        assert 'destination_version="v9"' in text
    finally:
        await exporter.stop()
