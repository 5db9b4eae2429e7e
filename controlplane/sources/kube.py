"""The in-cluster source: the Kubernetes API through the official ``kubernetes`` client.

Per kind, a list (which gives a ``resourceVersion``) then a watch from that version;
each event updates that kind's table. A watch that ends is resumed from the last
version seen; ``410 Gone`` (the version expired) means list again; a broken
connection is retried with exponential backoff. Objects go through the same
validation as the folder source, and a bad update keeps the last good version.

The pure part is :class:`KindTable` (list results and watch events in, objects out);
:class:`KubernetesSource` runs one thread per kind (the client is synchronous) and
hands their updates to the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.errors import KubernetesSourceError
from controlplane.model import ClusterObject, ClusterState, Severity, SourceIssue
from controlplane.sources.decode import decode
from controlplane.sources.state import assemble

log = logging.getLogger(__name__)

HTTP_GONE = 410
HTTP_NOT_FOUND = 404
HTTP_DENIED = (401, 403)
MAX_LIST_RESTARTS = 3


@dataclass(frozen=True)
class ResourceKind:
    """One API resource the source lists and watches."""

    kind: str
    group: str
    version: str
    plural: str
    field_selector: str = ""
    """Server-side filter of the list and watch ('' for none)."""

    @property
    def api_version(self) -> str:
        """``group/version`` (``v1`` for the core group)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        """The cluster-wide collection path, used to name where an issue came from."""
        prefix = f"/apis/{self.group}" if self.group else "/api"
        return f"{prefix}/{self.version}/{self.plural}"


SECRET_FIELD_SELECTOR = "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token"  # noqa: S105
"""Secrets that never hold gateway certificates stay on the server, as in istiod."""

DEFAULT_KINDS: tuple[ResourceKind, ...] = (
    ResourceKind("Namespace", "", "v1", "namespaces"),
    ResourceKind("Pod", "", "v1", "pods"),
    ResourceKind("Service", "", "v1", "services"),
    ResourceKind("ServiceAccount", "", "v1", "serviceaccounts"),
    ResourceKind("Secret", "", "v1", "secrets", SECRET_FIELD_SELECTOR),
    ResourceKind("PeerAuthentication", "security.istio.io", "v1", "peerauthentications"),
    ResourceKind("AuthorizationPolicy", "security.istio.io", "v1", "authorizationpolicies"),
    ResourceKind("VirtualService", "networking.istio.io", "v1", "virtualservices"),
    ResourceKind("DestinationRule", "networking.istio.io", "v1", "destinationrules"),
    ResourceKind("Gateway", "networking.istio.io", "v1", "gateways"),
    ResourceKind("Gateway", "gateway.networking.k8s.io", "v1", "gateways"),
    ResourceKind("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes"),
)
"""What the control plane reads (Istio's current storage versions)."""


ObjectName = tuple[str, str]


def _name_of(raw: Mapping[str, Any]) -> ObjectName:
    meta = raw.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class KindTable:
    """The objects of one kind, from a list and the watch events after it."""

    def __init__(self, kind: ResourceKind) -> None:
        self.kind = kind
        self.objects: dict[ObjectName, ClusterObject] = {}
        self.issues: dict[ObjectName, list[SourceIssue]] = {}
        self.synced = False
        """Whether a first list has completed (or the kind is known not to be served)."""
        self.resource_version = ""
        self.unavailable: SourceIssue | None = None

    def replace(self, items: Iterable[Mapping[str, Any]], resource_version: str) -> None:
        """A fresh list: objects not in it are gone; bad ones keep their old version."""
        previous = self.objects
        self.objects, self.issues = {}, {}
        for raw in items:
            self._put(raw, previous)
        self.resource_version = resource_version
        self.synced = True
        self.unavailable = None

    def apply(self, event_type: str, raw: Mapping[str, Any]) -> None:
        """One watch event: ADDED, MODIFIED or DELETED."""
        version = (raw.get("metadata") or {}).get("resourceVersion")
        if isinstance(version, str) and version:
            self.resource_version = version
        if event_type == "DELETED":
            name = _name_of(raw)
            self.objects.pop(name, None)
            self.issues.pop(name, None)
        elif event_type in ("ADDED", "MODIFIED"):
            self._put(raw, self.objects)

    def mark_unavailable(self, message: str) -> None:
        """The cluster does not serve this kind (e.g. Istio's CRDs are not installed)."""
        self.objects, self.issues = {}, {}
        self.synced = True
        self.unavailable = SourceIssue.about_file(
            self.kind.path, message, severity=Severity.WARNING
        )

    def all_issues(self) -> list[SourceIssue]:
        """Every current issue of this kind."""
        issues = [i for found in self.issues.values() for i in found]
        return [self.unavailable, *issues] if self.unavailable else issues

    def _put(self, raw: Mapping[str, Any], previous: Mapping[ObjectName, ClusterObject]) -> None:
        # List items carry no apiVersion/kind; the collection says what they are.
        full = {"apiVersion": self.kind.api_version, "kind": self.kind.kind, **raw}
        result = decode(full)
        name = _name_of(raw)
        if result.obj is not None:
            self.objects[name] = result.obj
            kept = False
        else:
            kept = result.rejected and name in previous
            if kept:
                self.objects[name] = previous[name]
        found = result.issues(self.kind.path, 0, kept_previous=kept)
        if found:
            self.issues[name] = found
        else:
            self.issues.pop(name, None)


def state_of(tables: Iterable[KindTable]) -> ClusterState:
    """One cluster state from every kind's table."""
    tables = list(tables)
    objects = [obj for table in tables for obj in table.objects.values()]
    return assemble(objects, [i for table in tables for i in table.all_issues()])


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between reconnection attempts."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0

    def delays(self) -> Iterable[float]:
        """Endless delays: initial, initial*factor, ... capped at maximum."""
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)


def _denied(kind: ResourceKind, status: int, reason: str) -> str:
    return (
        f"the API refuses to list {kind.api_version} {kind.plural} (HTTP {status} {reason}); "
        "grant list and watch on it (retrying)"
    )


def _api_error(err: Exception) -> tuple[int, str]:
    status = getattr(err, "status", None)
    reason = getattr(err, "reason", None) or str(err)
    return (status if isinstance(status, int) else 0, str(reason))


class KubernetesSource:
    """Cluster state from the Kubernetes API (in-cluster config, or a kubeconfig).

    ``api_client`` may be given (a configured ``kubernetes.client.ApiClient``);
    otherwise the in-cluster configuration is tried, then ``kubeconfig``/``context``.
    """

    def __init__(
        self,
        api_client: Any | None = None,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        kinds: tuple[ResourceKind, ...] = DEFAULT_KINDS,
        watch_timeout: int = 240,
        backoff: Backoff | None = None,
        page_size: int = 500,
    ) -> None:
        self._api_client = api_client
        self._kubeconfig = kubeconfig
        self._context = context
        self.kinds = kinds
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff()
        self.page_size = page_size

    # --- the client ---------------------------------------------------------------------

    def _client(self) -> Any:
        """The API client: given, in-cluster, or from a kubeconfig (never global state)."""
        if self._api_client is None:
            from kubernetes import client, config

            if self._kubeconfig is None and self._context is None:
                in_cluster = client.Configuration()
                try:
                    config.load_incluster_config(  # type: ignore[no-untyped-call]
                        client_configuration=in_cluster
                    )
                    self._api_client = client.ApiClient(in_cluster)
                    return self._api_client
                except config.ConfigException:
                    pass  # not in a pod: try the kubeconfig
            try:
                self._api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=self._kubeconfig, context=self._context, persist_config=False
                )
            except (config.ConfigException, OSError) as err:
                raise KubernetesSourceError(
                    f"no usable Kubernetes configuration: {err}",
                    hint="run inside a pod with a service account, or pass --kubeconfig "
                    "(and --context) naming a cluster you can reach",
                ) from err
        return self._api_client

    def _lister(self, kind: ResourceKind) -> Callable[..., Any]:
        """The client's cluster-wide list function of a kind (also used to watch)."""
        from kubernetes import client

        api = self._client()
        if kind.group:
            custom = client.CustomObjectsApi(api)
            return functools.partial(
                custom.list_cluster_custom_object, kind.group, kind.version, kind.plural
            )
        core = client.CoreV1Api(api)
        name = "list_namespace" if kind.kind == "Namespace" else None
        if name is None:
            snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in kind.kind).lstrip("_")
            name = f"list_{snake}_for_all_namespaces"
        if kind.field_selector:
            return functools.partial(getattr(core, name), field_selector=kind.field_selector)
        return functools.partial(getattr(core, name))

    def _list(self, kind: ResourceKind) -> tuple[list[Any], str]:
        """Every object of a kind, in pages of ``page_size``, and the list's version."""
        from kubernetes.client.exceptions import ApiException

        lister = self._lister(kind)
        items: list[Any] = []
        token = ""
        restarts = 0
        while True:
            page: dict[str, Any] = {"limit": self.page_size}
            if token:
                page["_continue"] = token
            try:
                response = lister(_preload_content=False, **page)
            except ApiException as err:
                # A continue token expires (410) when listing takes too long: start over.
                if not token or _api_error(err)[0] != HTTP_GONE or restarts >= MAX_LIST_RESTARTS:
                    raise
                items, token, restarts = [], "", restarts + 1
                continue
            try:
                body = json.loads(response.data)
            finally:
                response.release_conn()
            items += body.get("items") or []
            meta = body.get("metadata") or {}
            token = str(meta.get("continue") or "")
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    # --- load ---------------------------------------------------------------------------

    def load(self) -> ClusterState:
        """Lists every kind once."""
        from kubernetes.client.exceptions import ApiException

        tables = []
        for kind in self.kinds:
            table = KindTable(kind)
            try:
                items, version = self._list(kind)
                table.replace(items, version)
            except ApiException as err:
                status, reason = _api_error(err)
                if status != HTTP_NOT_FOUND:
                    raise self._unreachable(kind, f"HTTP {status} {reason}") from err
                table.mark_unavailable(self._not_served(kind))
            except (OSError, ValueError) as err:
                raise self._unreachable(kind, str(err)) from err
            except Exception as err:
                if type(err).__module__.startswith("urllib3"):
                    raise self._unreachable(kind, str(err)) from err
                raise
            tables.append(table)
        return state_of(tables)

    @staticmethod
    def _not_served(kind: ResourceKind) -> str:
        return (
            f"the cluster does not serve {kind.api_version} {kind.plural}; "
            "is the CRD installed? (no objects of this kind are read)"
        )

    @staticmethod
    def _unreachable(kind: ResourceKind, detail: str) -> KubernetesSourceError:
        return KubernetesSourceError(
            f"cannot list {kind.path} from the Kubernetes API: {detail}",
            hint="check the API server address, the credentials and the RBAC rules (list "
            "and watch on pods, services, namespaces, serviceaccounts, secrets and Istio CRDs)",
        )

    # --- watch --------------------------------------------------------------------------

    async def watch(self, interval: float = 0.2) -> AsyncIterator[ClusterState]:
        """Yields the state once every kind is listed, then after every change.

        Changes arriving within ``interval`` of each other are yielded together.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[ResourceKind, str, Any]] = asyncio.Queue()
        tables = {kind: KindTable(kind) for kind in self.kinds}
        stop = threading.Event()
        watchers = [_KindWatcher(self, kind, loop, queue, stop) for kind in self.kinds]
        for watcher in watchers:
            watcher.start()
        last: ClusterState | None = None
        try:
            while True:
                _apply(tables, await queue.get())
                deadline = loop.time() + interval
                while (remaining := deadline - loop.time()) > 0:
                    try:
                        _apply(tables, await asyncio.wait_for(queue.get(), remaining))
                    except TimeoutError:
                        break
                if not all(t.synced for t in tables.values()):
                    continue
                state = state_of(tables.values())
                if last is None or not (
                    state.same_objects(last)
                    and state.errors == last.errors
                    and state.warnings == last.warnings
                ):
                    last = state
                    yield state
        finally:
            stop.set()
            for watcher in watchers:
                watcher.interrupt()
            for watcher in watchers:
                await asyncio.to_thread(watcher.join, 5.0)


def _apply(tables: Mapping[ResourceKind, KindTable], update: tuple[ResourceKind, str, Any]) -> None:
    kind, what, payload = update
    table = tables[kind]
    if what == "list":
        items, version = payload
        table.replace(items, version)
    elif what == "unavailable":
        table.mark_unavailable(payload)
    else:
        table.apply(what, payload)


class _KindWatcher(threading.Thread):
    """List and watch one kind forever (until ``stop``), posting updates to the loop."""

    def __init__(
        self,
        source: KubernetesSource,
        kind: ResourceKind,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[tuple[ResourceKind, str, Any]],
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"watch-{kind.plural}", daemon=True)
        self.source = source
        self.kind = kind
        self.loop = loop
        self.queue = queue
        self.stop = stop
        self._response: Any = None
        self._lock = threading.Lock()

    def post(self, what: str, payload: Any) -> None:
        """Hands one update to the event loop."""
        if not self.stop.is_set():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.kind, what, payload))

    def interrupt(self) -> None:
        """Unblocks a watch waiting for data, so that the thread sees ``stop``."""
        with self._lock:
            response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception:  # best effort: the connection may be gone already
                log.debug("shutting down the %s watch failed", self.kind.plural, exc_info=True)

    def run(self) -> None:
        """Lists, watches, relists on 410, reconnects with backoff."""
        from kubernetes.client.exceptions import ApiException

        version = ""
        delays = iter(self.source.backoff.delays())
        while not self.stop.is_set():
            try:
                if not version:
                    items, version = self.source._list(self.kind)
                    self.post("list", (items, version))
                version = self._watch(version)
                delays = iter(self.source.backoff.delays())
                continue
            except ApiException as err:
                status, reason = _api_error(err)
                if status == HTTP_GONE:
                    log.info("watch of %s expired (410 Gone); listing again", self.kind.plural)
                    version = ""
                    continue
                if status == HTTP_NOT_FOUND and not version:
                    self.post("unavailable", KubernetesSource._not_served(self.kind))
                elif status in HTTP_DENIED and not version:
                    # Do not hold every other kind back: report, and keep asking.
                    self.post("unavailable", _denied(self.kind, status, reason))
                else:
                    log.warning("watch of %s failed: HTTP %s %s", self.kind.plural, status, reason)
            except Exception as err:  # any transport failure means: reconnect
                if self.stop.is_set():
                    break
                log.warning("watch of %s broke (%s); reconnecting", self.kind.plural, err)
            self.stop.wait(next(delays))

    def _watch(self, version: str) -> str:
        """One watch request from ``version``; returns the last version seen."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        response = self.source._lister(self.kind)(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.source.watch_timeout,
            _preload_content=False,
            _request_timeout=(10, self.source.watch_timeout + 30),
        )
        with self._lock:
            self._response = response
        try:
            if self.stop.is_set():  # stopped while connecting: interrupt() saw no response
                return version
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self.stop.is_set():
                    break
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise ApiException(status=obj.get("code", 0), reason=obj.get("message", ""))
                new = (obj.get("metadata") or {}).get("resourceVersion")
                if isinstance(new, str) and new:
                    version = new
                if kind != "BOOKMARK":
                    self.post(kind, obj)
        finally:
            with self._lock:
                self._response = None
            response.release_conn()
        return version
