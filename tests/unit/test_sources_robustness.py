"""No input makes the YAML reader or the decoder raise: garbage becomes issues."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.sources.decode import decode
from controlplane.sources.documents import parse_text
from controlplane.sources.folder import decode_file

KINDS = [
    ("v1", "Namespace"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("security.istio.io/v1", "PeerAuthentication"),
    ("security.istio.io/v1beta1", "AuthorizationPolicy"),
    ("networking.istio.io/v1alpha3", "VirtualService"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("example.com/v1", "Widget"),
]
FIELD_NAMES = [
    "spec", "status", "metadata", "name", "namespace", "labels", "selector", "matchLabels",
    "rules", "from", "to", "when", "source", "operation", "ports", "port", "targetPort",
    "principals", "namespaces", "ipBlocks", "serviceAccounts", "key", "values", "mtls", "mode",
    "portLevelMtls", "containers", "containerPort", "podIP", "podIPs", "ip", "conditions",
    "clusterIP", "clusterIPs", "hosts", "host", "subsets", "action", "provider", "targetRefs",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["*", "STRICT", "ALLOW", "DENY", "10.0.0.1", "a*b", "8080", "http", "None"]),
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), scalars), inner, max_size=5),
    ),
    max_leaves=25,
)


@st.composite
def objects(draw: st.DrawFn) -> Any:
    api_version, kind = draw(st.sampled_from(KINDS))
    obj = {"apiVersion": api_version, "kind": kind, "metadata": draw(values)}
    obj.update(draw(st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=4)))
    return obj


@settings(max_examples=200, deadline=None)
@given(st.one_of(objects(), values))
def test_decode_never_raises(raw: Any) -> None:
    result = decode(raw)
    assert result.obj is not None or result.problems or result.kind == ""
    for issue in result.issues("f.yaml", 1):
        assert str(issue)


@settings(max_examples=150, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("abc:-[]{}'\"#&*!|>%@`\n\t 0123456789.")), max_size=80)
)
def test_parsing_arbitrary_text_never_raises(text: str) -> None:
    content = parse_text(text, "f.yaml")
    result = decode_file("f.yaml", content, {})
    assert all(str(i) for i in result.issues)
