"""The access-log line: text and JSON carry the same fields and values."""

from __future__ import annotations

import ast
import json
import logging
import re

import pytest

from ztunnel.proxy.proxy import AccessRecord


def test_text_and_json_lines_carry_the_same_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ztunnel.access")
    record = AccessRecord("inbound-hbone", "10.244.1.7:41234", "10.244.2.5:8080")
    record.src_workload, record.dst_workload = "client", "server"
    record.src_identity = "spiffe://cluster.local/ns/demo/sa/client"
    record.bytes_sent, record.bytes_received = 12, 3400
    record.result, record.reason = "DENY", "no ALLOW policy matched 'x'"
    record.emit("text")
    record.emit("json")
    text, as_json = (r.getMessage() for r in caplog.records if r.name == "ztunnel.access")
    match = re.fullmatch(r"(.*) reason=(.*) duration_ms=(\S+)", text)
    assert match is not None, text
    head, reason, duration = match.groups()
    fields = dict(part.split("=", 1) for part in head.split(" "))
    fields["reason"], fields["duration_ms"] = ast.literal_eval(reason), duration
    doc = json.loads(as_json)
    assert set(fields) == set(doc)
    for key in ("direction", "src", "dst", "src_workload", "dst_identity", "result", "reason"):
        assert fields[key] == doc[key]
    assert int(fields["bytes_received"]) == doc["bytes_received"] == 3400
    assert float(fields["duration_ms"]) >= 0 and doc["duration_ms"] >= 0


def test_nothing_is_built_when_access_logging_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ztunnel.access")
    AccessRecord("outbound", "a", "b").emit("text")
    assert not [r for r in caplog.records if r.name == "ztunnel.access"]
