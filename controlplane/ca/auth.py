"""Who is calling, and what they may ask for: caller authentication and the impersonation check.

Callers of the CA (and of xDS) send ``authorization: Bearer <token>`` in gRPC metadata,
as Istio's ztunnel does. Standalone the token is a node credential
(:mod:`controlplane.ca.credentials`); in a cluster it is a projected service-account
token checked with the API's TokenReview. Either way the result is a :class:`Caller`
naming the node the caller runs on. :func:`check_impersonation` then allows an
identity only when a pod running as it is scheduled on that node (Istio's rule).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from controlplane.ca.credentials import AUDIENCE, NodeTokens
from controlplane.errors import AuthenticationError, ImpersonationDenied
from controlplane.model import ClusterState
from ztunnel.identity.spiffe import SpiffeId


@dataclass(frozen=True)
class Caller:
    """An authenticated caller."""

    node: str
    """The node whose workloads the caller may ask certificates for."""
    subject: str
    """Who it proved to be (``spiffe://td/node/<node>``, ``system:serviceaccount:ns:sa``)."""
    method: str
    """``node-credential`` or ``tokenreview``."""


class Authenticator(Protocol):
    """Turns a bearer token into a :class:`Caller` or raises :class:`AuthenticationError`."""

    def authenticate(self, token: str, state: ClusterState, now: dt.datetime) -> Caller:
        """Check ``token``; ``state`` lets an implementation find the caller's pod."""
        ...


def bearer_token(metadata: Mapping[str, str]) -> str:
    """The token of an ``authorization: Bearer ...`` entry; :class:`AuthenticationError` if none."""
    value = metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "no credential: the request has no 'authorization: Bearer <token>' metadata",
            hint="standalone, give the node its token from 'ambient controlplane node-credential'",
        )
    return token.strip()


class NodeTokenAuthenticator:
    """Standalone: node credentials signed by this control plane."""

    def __init__(self, tokens: NodeTokens) -> None:
        self.tokens = tokens

    def authenticate(self, token: str, state: ClusterState, now: dt.datetime) -> Caller:
        """The node named by a valid node credential."""
        claims = self.tokens.verify(token, now)
        return Caller(node=claims.node, subject=claims.subject, method="node-credential")


POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


class TokenReviewAuthenticator:
    """In a cluster: a service-account token, checked by the API server's TokenReview.

    The account must be one of ``trusted_accounts`` (``<ns>/<sa>``, Istio's
    ``CA_TRUSTED_NODE_ACCOUNTS``, default ``istio-system/ztunnel``); the token must be
    bound to a pod (projected tokens are), which must exist in the cluster state with
    that account (and uid); the caller's node is that pod's node.
    """

    def __init__(
        self,
        api_client: Any,
        trusted_accounts: tuple[str, ...] = ("istio-system/ztunnel",),
        audience: str = AUDIENCE,
        timeout: float = 5.0,
    ) -> None:
        self._api_client = api_client
        self.trusted_accounts = trusted_accounts
        self.audience = audience
        self.timeout = timeout

    def review(self, token: str) -> tuple[str, Mapping[str, list[str]]]:
        """Ask the API server; the username and extra fields of an authenticated token."""
        from kubernetes import client

        api = client.AuthenticationV1Api(self._api_client)
        body = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=[self.audience])
        )
        try:
            result = api.create_token_review(body, _request_timeout=self.timeout)
        except Exception as err:  # ApiException, urllib3 errors: the API is unusable
            raise AuthenticationError(
                f"TokenReview failed: {err}",
                hint="the control plane needs RBAC to create tokenreviews "
                "(authentication.k8s.io), and the API server must be reachable",
            ) from err
        status = result.status
        if status is None or not status.authenticated:
            detail = getattr(status, "error", None) or "not authenticated"
            raise AuthenticationError(f"the service-account token was refused: {detail}")
        user = status.user
        if user is None:
            raise AuthenticationError("TokenReview authenticated the token but named no user")
        return str(user.username or ""), dict(user.extra or {})

    def authenticate(self, token: str, state: ClusterState, now: dt.datetime) -> Caller:
        """The node of the pod the token was issued to."""
        username, extra = self.review(token)
        prefix = "system:serviceaccount:"
        if not username.startswith(prefix) or username.count(":") != 3:
            raise AuthenticationError(f"{username!r} is not a service account")
        namespace, account = username[len(prefix) :].split(":")
        if f"{namespace}/{account}" not in self.trusted_accounts:
            raise AuthenticationError(
                f"service account {namespace}/{account} may not request other identities",
                hint=f"trusted node accounts: {', '.join(self.trusted_accounts)}",
            )
        pod_name = (extra.get(POD_NAME_EXTRA) or [""])[0]
        pod_uid = (extra.get(POD_UID_EXTRA) or [""])[0]
        pod = state.pods.get((namespace, pod_name)) if pod_name else None
        if pod is None or pod.service_account != account or (pod_uid and pod.uid != pod_uid):
            raise AuthenticationError(
                f"the token of {username} is not bound to a known pod ({pod_name or 'none'})",
                hint="use a projected service-account token (audience istio-ca)",
            )
        if not pod.node_name:
            raise AuthenticationError(f"pod {namespace}/{pod_name} is not scheduled on a node")
        return Caller(node=pod.node_name, subject=username, method="tokenreview")


class ChainedAuthenticator:
    """Node credentials first (when the token is one), else the next authenticator."""

    def __init__(self, tokens: NodeTokens, fallback: Authenticator | None) -> None:
        self.nodes = NodeTokenAuthenticator(tokens)
        self.fallback = fallback

    def authenticate(self, token: str, state: ClusterState, now: dt.datetime) -> Caller:
        """Whichever authenticator the token is meant for."""
        if self.fallback is None or NodeTokens.looks_like_ours(token):
            return self.nodes.authenticate(token, state, now)
        return self.fallback.authenticate(token, state, now)


def check_impersonation(caller: Caller, identity: SpiffeId, state: ClusterState) -> None:
    """Allow ``identity`` only if a pod running as it is scheduled on the caller's node."""
    for pod in state.pods.values():
        if (
            pod.node_name == caller.node
            and pod.namespace == identity.namespace
            and (pod.service_account or "default") == identity.service_account
            and not pod.deleting
        ):
            return
    raise ImpersonationDenied(
        f"node {caller.node} ({caller.subject}) asked for {identity}, "
        "but no pod with that identity is scheduled on it",
        hint="a node gets certificates only for its own workloads",
    )
