"""The demo's L7 half: the tutorial through its waypoint and the ingress gateway (checks 8-13).

:func:`build_l7` registers the control plane with the lab (:mod:`lab.mesh`), applies
``deploy/examples/tutorial/`` unchanged (plus its ``waypoint.yaml``), enrolls the
namespace and binds it to the waypoint as Istio's ambient docs do
(``istio.io/dataplane-mode=ambient``, ``istio.io/use-waypoint=waypoint``), and waits
until a request crosses the waypoint and the ingress gateway answers. What it cannot
bring up is named in ``world.l7_missing`` / ``world.ingress_missing``, and the checks
that need it report FAIL with that reason, never a pass.

Each check applies one file of ``deploy/examples/tutorial-l7/`` (or a broken copy, with
``--break``), measures from the demo's ``frontend`` pod (in the mesh, namespace
``demo``) or from ``outside``, and puts the tutorial's own routing back afterwards.
The verdicts are small pure functions, unit-tested.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from lab import mesh
from lab.demo import (
    REPO_ROOT,
    TRUST_DOMAIN,
    XDS_SERVER_NAME,
    CheckResult,
    DemoWorld,
    Progress,
    _enrolls,
    _poll,
    answers_by_version,
    metric_value,
)
from lab.model import Pod

TUTORIAL = REPO_ROOT / "deploy" / "examples" / "tutorial"
TUTORIAL_FILES = ("app.yaml", "traffic.yaml", "waypoint.yaml")
L7 = REPO_ROOT / "deploy" / "examples" / "tutorial-l7"
NAMESPACE = "tutorial"
BACKEND_URL = "http://backend.tutorial/"
INGRESS_HOST = "istio-ingressgateway.istio-system"
ECHO_PORT = 5678
NO_GATEWAY_COPY = "traffic-without-gateway.yaml"
"""The tutorial's traffic.yaml without its Gateway (``--break no-ingress``)."""
L7_CONVERGE = 20.0
"""Seconds allowed for a routing change to reach Envoy (folder poll + xDS push; the
machine may be busy)."""
V1_CLUSTER = "outbound|80|v1|backend.tutorial.svc.cluster.local"
READY_TIMEOUT = 45.0
REQUESTS = 1000
CONCURRENCY = 20
Z_999 = 3.2905
"""Two-sided 99.9% quantile of the standard normal."""


# --------------------------------------------------------------------------- verdicts


def binomial_interval(n: int, p: float, z: float = Z_999) -> tuple[float, float]:
    """Where a Binomial(n, p) count falls with the confidence ``z`` stands for."""
    half = z * math.sqrt(n * p * (1 - p))
    return n * p - half, n * p + half


def split_within(versions: Mapping[str, int], weights: Mapping[str, int], n: int) -> bool:
    """Whether every version's count of ``n`` answers fits its weight's interval."""
    total = sum(weights.values())
    if sum(versions.values()) != n:
        return False
    for version, weight in weights.items():
        low, high = binomial_interval(n, weight / total)
        if not low <= versions.get(version, 0) <= high:
            return False
    return True


def switch_delay(stamped: list[tuple[float, str]], since: float, want: str) -> float | None:
    """Seconds from ``since`` until every later answer came from ``want`` (None if the
    answers never settled on it)."""
    settled: float | None = None
    for stamp, version in stamped:
        if version != want:
            settled = None
        elif settled is None:
            settled = stamp
    if settled is None or not any(v == want for _, v in stamped):
        return None
    return max(0.0, settled - since)


def stamped_versions(log: str) -> list[tuple[float, str]]:
    """``<unix time> <body first line>`` lines of ``client http --stamp``, as versions."""
    out = []
    for line in log.splitlines():
        found = re.match(r"^(\d+\.\d+) .*Hello from backend (v\d+)", line)
        if found:
            out.append((float(found.group(1)), found.group(2)))
    return out


def status_count(summary: Mapping[str, Any], status: int) -> int:
    """Answers with that status in a client summary."""
    return int(summary.get("statuses", {}).get(str(status), 0))


# --------------------------------------------------------------------------- the world


def _tutorial_pods(world: DemoWorld) -> dict[str, list[Pod]]:
    from lab.manifests.apply import workload_pods

    return {
        name: workload_pods(world.lab, NAMESPACE, name)
        for name in ("frontend", "backend-v1", "backend-v2")
    }


def _proxy(world: DemoWorld, namespace: str, name: str) -> Pod | None:
    for pod in world.lab.pods:
        if pod.namespace == namespace and pod.name == name:
            return pod
    return None


def pod_curl(world: DemoWorld, pod: Pod, url: str, *args: str) -> str:
    """``curl -s`` in a pod (to its own loopback, for ports nothing captures)."""
    done = world.lab.exec(pod, ["curl", "-s", "-m", "3", *args, url], timeout=20)
    return done.stdout if done.returncode == 0 else f"ERROR curl exit {done.returncode}"


def proxy_metrics(world: DemoWorld, pod: Pod | None) -> str:
    """The Prometheus text of a waypoint's or gateway's exporter (its 15020)."""
    if pod is None:
        return ""
    return pod_curl(world, pod, "http://127.0.0.1:15020/stats/prometheus")


def set_fault(world: DemoWorld, pod: Pod, *, status: int = 200, delay_ms: int = 0) -> str:
    """Makes a backend pod's echo server answer ``status`` / wait ``delay_ms`` (or neither)."""
    query = f"?status={status}&delay_ms={delay_ms}" if (status != 200 or delay_ms) else ""
    return pod_curl(world, pod, f"http://127.0.0.1:{ECHO_PORT}/__lab/fault{query}", "-X", "POST")


def answered(world: DemoWorld, pod: Pod, status: int) -> int:
    """How many requests a tutorial pod's echo server answered with ``status`` so far."""
    total = 0
    for proc in world.lab.processes:
        if proc.netns == pod.netns and "http-echo" in proc.name:
            total += len(re.findall(rf" {status}$", proc.log_text(), flags=re.M))
    return total


def apply_doc(
    world: DemoWorld, path: Path, edit: Callable[[list[Any]], None] | None = None
) -> None:
    """Applies a file of the examples, or a copy changed by ``edit`` (for ``--break``)."""
    if edit is None:
        world.apply(path)
        return
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    edit(docs)
    copy = world.lab.run_dir / f"broken-{path.name}"
    copy.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    world.apply(copy)


def restore_tutorial(world: DemoWorld) -> None:
    """The tutorial's own VirtualServices and DestinationRule again (80/20, subsets),
    and until the waypoint has them: v1 unlimited, v2 answering again."""
    copy = world.lab.run_dir / NO_GATEWAY_COPY
    world.apply(copy if copy.exists() else TUTORIAL / "traffic.yaml")
    waypoint = _proxy(world, NAMESPACE, "waypoint")
    unlimited = f"{V1_CLUSTER}::default_priority::max_requests::4294967295"
    _poll(
        lambda: (
            unlimited in envoy_clusters(world, waypoint) and "v2" in _versions_now(world, count=20)
        ),
        L7_CONVERGE,
    )


def _versions_now(
    world: DemoWorld, headers: dict[str, str] | None = None, count: int = 4
) -> dict[str, int]:
    got = world.http("frontend", BACKEND_URL, count=count, timeout=2.0, headers=headers)
    return answers_by_version(got)


def _only_v1(world: DemoWorld) -> bool:
    """Whether 20 answers in a row came from v1 (by chance under 80/20: 1%)."""
    return _versions_now(world, count=20) == {"v1": 20}


def envoy_clusters(world: DemoWorld, pod: Pod | None) -> str:
    """Envoy's admin ``/clusters`` of a proxy pod (limits, hosts, outlier state)."""
    return "" if pod is None else pod_curl(world, pod, "http://127.0.0.1:15000/clusters")


def metric_delta(
    world: DemoWorld,
    pod: Pod | None,
    before: str,
    name: str,
    *,
    labels: dict[str, str],
    want: float,
) -> float:
    """How much a metric of a proxy grew since ``before``, waiting (up to 5 s) for it to
    reach ``want``: the access log reaches the exporter in batches."""
    seen = [0.0]

    def reached() -> bool:
        seen[0] = metric_value(proxy_metrics(world, pod), name, labels) - metric_value(
            before, name, labels
        )
        return seen[0] >= want

    _poll(reached, 5.0)
    return seen[0]


def build_l7(world: DemoWorld, progress: Progress) -> None:
    """The tutorial behind its waypoint and the ingress gateway; records what is missing."""
    lab, config = world.lab, world.config
    with progress.step("register the control plane with the lab (waypoints connect to it)"):
        mesh.register(
            lab.run_dir,
            mesh.MeshEndpoint(
                xds_address=world.xds_address,
                xds_server_name=XDS_SERVER_NAME,
                root_cert=str(world.state_dir / "root-cert.pem"),
                trust_domain=TRUST_DOMAIN,
                tokens={n.name: str(world.node_token(n)) for n in lab.nodes},
            ),
        )
    files: list[Path] = [TUTORIAL / f for f in TUTORIAL_FILES]
    if "no-ingress" in config.sabotage:
        traffic = [
            d
            for d in yaml.safe_load_all((TUTORIAL / "traffic.yaml").read_text())
            if d and d.get("kind") != "Gateway"
        ]
        for doc in traffic:
            doc.get("spec", {}).pop("gateways", None)
        copy = lab.run_dir / NO_GATEWAY_COPY
        copy.write_text(yaml.safe_dump_all(traffic, sort_keys=False))
        files = [TUTORIAL / "app.yaml", copy, TUTORIAL / "waypoint.yaml"]
    with progress.step("apply deploy/examples/tutorial/ (unchanged) and its waypoint.yaml"):
        world.apply(*files)
        labels: dict[str, str | None] = {"istio.io/dataplane-mode": "ambient"}
        if "no-waypoint" not in config.sabotage:
            labels["istio.io/use-waypoint"] = "waypoint"
        lab.set_namespace_labels(NAMESPACE, labels)
    pods = _tutorial_pods(world)
    with progress.step("tutorial pods enrolled; waypoint and ingress gateway ready"):
        if world.agents:
            for node in lab.nodes:
                want = {p.ip for ps in pods.values() for p in ps if p.node == node.name}
                world.wait_for(_enrolls(world, node.name, want), 60, f"{node.name} to enroll")
        world.l7_missing = _wait_proxy(world, NAMESPACE, "waypoint")
        if not world.l7_missing:
            got: dict[str, Any] = {}

            def crosses() -> bool:
                got.update(world.http("frontend", BACKEND_URL, count=2, timeout=2.0))
                return got.get("ok") == 2

            if not _poll(crosses, READY_TIMEOUT):
                world.l7_missing = (
                    f"frontend -> {BACKEND_URL} through the waypoint did not answer within "
                    f"{READY_TIMEOUT:.0f}s ({'; '.join(got.get('errors', [])[:2]) or got})"
                )
        if "no-ingress" in config.sabotage:
            world.ingress_missing = ""  # check 13 finds out itself
        else:
            world.ingress_missing = _wait_proxy(world, "istio-system", "istio-ingressgateway")


def _wait_proxy(world: DemoWorld, namespace: str, name: str) -> str:
    """Waits for a proxy pod's Envoy to be ready; '' or why it is not."""
    pod = _proxy(world, namespace, name)
    if pod is None:
        return f"no pod {namespace}/{name} (lab apply of the Gateway made none)"
    process = f"{pod.name}.{pod.namespace}-proxy"
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        procs = [p for p in world.lab.processes if p.name == process]
        if not procs:
            return f"no 'ambient waypoint run' process in {pod.key}"
        if not procs[0].alive():
            tail = procs[0].log_text()[-400:].strip().replace("\n", " | ")
            return f"'ambient waypoint run' in {pod.key} exited: {tail}"
        if "LIVE" in pod_curl(world, pod, "http://127.0.0.1:15000/ready"):
            return ""  # Envoy's admin: initialized, its first xDS answers applied
        time.sleep(0.3)
    return f"{pod.key}'s Envoy not LIVE (admin /ready) within {READY_TIMEOUT:.0f}s"


def _not_run(number: int, title: str, why: str) -> CheckResult:
    return CheckResult(number, title, False, (f"not run: {why}",))


# --------------------------------------------------------------------------- checks


def check_canary(world: DemoWorld) -> CheckResult:
    """8. Canary: the 80/20 split within a binomial 99.9% interval; a live change within 1 s."""
    title = "canary: 1,000 requests split 80/20 (99.9% interval); live weight change < 1 s"
    if world.l7_missing:
        return _not_run(8, title, world.l7_missing)
    got = world.http("frontend", BACKEND_URL, count=REQUESTS, concurrency=CONCURRENCY)
    versions = answers_by_version(got)
    low, high = binomial_interval(REQUESTS, 0.8)
    split_ok = got.get("ok") == REQUESTS and split_within(versions, {"v1": 80, "v2": 20}, REQUESTS)
    # Live change: a client asking every 20 ms, the VirtualService rewritten to v2 only.
    argv = [
        "python",
        "-m",
        "lab.workloads.client",
        "http",
        BACKEND_URL,
        "--count",
        "250",
        "--interval",
        "0.02",
        "--timeout",
        "2",
        "--keepalive",
        "--stamp",
    ]
    watcher = world.lab.spawn(world.pods["frontend"], argv, name=f"canary-{time.time_ns()}")
    time.sleep(1.0)
    since = time.time()
    if "no-canary-change" not in world.config.sabotage:
        world.apply(L7 / "canary-v2.yaml")
    deadline = time.monotonic() + 15
    while watcher.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if watcher.alive():
        world.lab.stop(watcher)
    stamped = stamped_versions(watcher.log_text())
    after = [v for t, v in stamped if t >= since]
    before_change = {v for t, v in stamped if t < since}
    delay = switch_delay(stamped, since, "v2")
    # Before the write the same client saw both versions (per request, on one kept-alive
    # connection: L7), so "all v2 after" is a change, not one connection's one pod.
    change_ok = (
        before_change == {"v1", "v2"} and delay is not None and delay <= 1.0 and len(after) > 20
    )
    restore_tutorial(world)
    _poll(lambda: "v1" in _versions_now(world), L7_CONVERGE)
    return CheckResult(
        8,
        title,
        split_ok and change_ok,
        (
            f"frontend -> {BACKEND_URL} x{REQUESTS} ({CONCURRENCY} concurrent): "
            f"{got.get('ok')} answered, by version {versions or got.get('errors')}",
            f"VirtualService backend 80/20: v1 must fall in [{low:.0f}, {high:.0f}] "
            f"(binomial 99.9%): {'yes' if split_ok else 'NO'}",
            "live change to v2 only (deploy/examples/tutorial-l7/canary-v2.yaml): "
            + (
                f"every answer from v2 {delay:.2f}s after the write"
                if delay is not None
                else "answers never settled on v2"
            )
            + f" ({len(after)} answers after the write; before it, one kept-alive connection "
            f"saw {sorted(before_change) or 'nothing'})",
        ),
    )


def check_header_routing(world: DemoWorld) -> CheckResult:
    """9. Header routing: end-user: jason always reaches v2, others v1."""
    title = "header routing: end-user: jason -> v2, everyone else -> v1"
    if world.l7_missing:
        return _not_run(9, title, world.l7_missing)

    def no_match(docs: list[Any]) -> None:
        for doc in docs:
            doc["spec"]["http"] = [r for r in doc["spec"]["http"] if "match" not in r]
            doc["spec"]["http"][0]["route"] = [
                {"destination": {"host": "backend", "subset": "v1"}, "weight": 50},
                {"destination": {"host": "backend", "subset": "v2"}, "weight": 50},
            ]

    breaking = "no-header-routing" in world.config.sabotage
    apply_doc(world, L7 / "header-routing.yaml", no_match if breaking else None)
    jason = {"end-user": "jason"}
    _poll(
        lambda: _versions_now(world, jason, 10) == {"v2": 10} and _only_v1(world),
        L7_CONVERGE,
    )
    with_header = world.http("frontend", BACKEND_URL, count=100, concurrency=10, headers=jason)
    without = world.http("frontend", BACKEND_URL, count=100, concurrency=10)
    v_with, v_without = answers_by_version(with_header), answers_by_version(without)
    passed = v_with == {"v2": 100} and v_without == {"v1": 100}
    restore_tutorial(world)
    return CheckResult(
        9,
        title,
        passed,
        (
            "VirtualService backend: deploy/examples/tutorial-l7/header-routing.yaml"
            + (" WITHOUT its end-user match (--break)" if breaking else ""),
            f"with 'end-user: jason' x100: {v_with or with_header.get('errors')}",
            f"without the header x100: {v_without or without.get('errors')}",
        ),
    )


def check_retries(world: DemoWorld) -> CheckResult:
    """10. Retries: half the first attempts fail, >= 99% of 1,000 succeed, retries counted."""
    title = "retries: one of two v1 pods aborts (500), attempts 3 -> >= 99% of 1,000 succeed"
    if world.l7_missing:
        return _not_run(10, title, world.l7_missing)
    pods = _tutorial_pods(world)["backend-v1"]
    bad, good = pods[0], pods[1]

    def no_retries(docs: list[Any]) -> None:
        for doc in docs:
            for rule in doc["spec"]["http"]:
                rule.pop("retries", None)

    breaking = "no-retries" in world.config.sabotage
    apply_doc(world, L7 / "retries.yaml", no_retries if breaking else None)
    _poll(lambda: _only_v1(world), L7_CONVERGE)
    waypoint = _proxy(world, NAMESPACE, "waypoint")
    before = proxy_metrics(world, waypoint)
    # 500, not 503: Istio's default retry policy (retriable status 503) would retry a 503
    # without the VirtualService asking; a 500 is retried only by its retryOn 5xx.
    set_fault(world, bad, status=500)
    aborted_before = answered(world, bad, 500)
    try:
        got = world.http("frontend", BACKEND_URL, count=REQUESTS, concurrency=CONCURRENCY)
    finally:
        set_fault(world, bad)
    aborted = answered(world, bad, 500) - aborted_before
    labels = {"reporter": "waypoint", "destination_service_name": "backend"}
    retries = metric_delta(
        world, waypoint, before, "istio_request_retries_total", labels=labels, want=aborted * 0.9
    )
    failed_attempts = metric_delta(
        world,
        waypoint,
        before,
        "istio_request_attempts_total",
        labels={**labels, "response_code": "500"},
        want=1,
    )
    ok = int(got.get("ok", 0))
    passed = ok >= 0.99 * REQUESTS and aborted >= REQUESTS // 10 and retries >= aborted * 0.9
    restore_tutorial(world)
    return CheckResult(
        10,
        title,
        passed,
        (
            "VirtualService backend: deploy/examples/tutorial-l7/retries.yaml (v1; retries "
            "attempts 3 on 5xx)" + (" WITHOUT its retries (--break)" if breaking else ""),
            f"{bad.name} answers every request 500 (/__lab/fault), {good.name} is healthy",
            f"frontend -> {BACKEND_URL} x{REQUESTS} ({CONCURRENCY} concurrent): {ok} succeeded "
            f"({ok / REQUESTS:.1%}), statuses {got.get('statuses')}",
            f"{bad.name} aborted {aborted} attempts with 500",
            f"waypoint istio_request_retries_total +{retries:g}, "
            f"istio_request_attempts_total{{response_code=500}} +{failed_attempts:g}",
        ),
    )


def check_circuit_breaking(world: DemoWorld) -> CheckResult:
    """11. Circuit breaking (fast 503s, flag UO) and outlier detection (a 5xx pod ejected)."""
    title = "circuit breaking: fast 503 UO over 1 in flight; outlier detection ejects a 5xx pod"
    if world.l7_missing:
        return _not_run(11, title, world.l7_missing)
    pods = _tutorial_pods(world)["backend-v1"]
    bad, good = pods[0], pods[1]

    def no_limits(docs: list[Any]) -> None:
        for doc in docs:
            if doc["kind"] == "DestinationRule":
                doc["spec"].pop("trafficPolicy", None)

    breaking = "no-circuit-breaking" in world.config.sabotage
    apply_doc(world, L7 / "circuit-breaking.yaml", no_limits if breaking else None)
    waypoint = _proxy(world, NAMESPACE, "waypoint")
    _poll(lambda: _only_v1(world), L7_CONVERGE)
    limited = f"{V1_CLUSTER}::default_priority::max_requests::1\n"
    started = time.monotonic()
    limits_seen = not breaking and _poll(
        lambda: limited in envoy_clusters(world, waypoint), L7_CONVERGE
    )
    took = time.monotonic() - started
    before = proxy_metrics(world, waypoint)
    for pod in pods:
        set_fault(world, pod, delay_ms=200)
    try:
        burst = world.http(
            "frontend",
            BACKEND_URL,
            count=200,
            concurrency=CONCURRENCY,
            timeout=5.0,
            report_headers=("x-envoy-overloaded",),
        )
    finally:
        for pod in pods:
            set_fault(world, pod)
    overloaded = sum(burst.get("headers", {}).get("x-envoy-overloaded", {}).values())
    refused = status_count(burst, 503)
    uo = metric_delta(
        world,
        waypoint,
        before,
        "istio_requests_total",
        labels={"reporter": "waypoint", "response_flags": "UO"},
        want=max(1, overloaded),
    )
    breaker_ok = refused >= 20 and overloaded >= 20 and status_count(burst, 200) >= 1 and uo >= 20
    # Outlier detection: one pod answers 503; after its first 5xx it is ejected, so it
    # sees (almost) none of the next 100 requests. (Istio's default retry policy retries
    # a 503 on another host, so the caller sees 200s either way: the pods' own logs tell.)
    set_fault(world, bad, status=503)
    bad_before, served_before = answered(world, bad, 503), answered(world, good, 200)
    try:
        trickle = world.http("frontend", BACKEND_URL, count=100, timeout=3.0)
        ejected = "health_flags::/failed_outlier_check" in envoy_clusters(world, waypoint)
    finally:
        set_fault(world, bad)
    served = answered(world, good, 200) - served_before
    hit_bad = answered(world, bad, 503) - bad_before
    ejection_ok = hit_bad <= 5 and status_count(trickle, 200) >= 95 and served >= 95
    restore_tutorial(world)
    return CheckResult(
        11,
        title,
        breaker_ok and ejection_ok,
        (
            "DestinationRule backend: deploy/examples/tutorial-l7/circuit-breaking.yaml "
            "(maxConnections 1, http1MaxPendingRequests 1, http2MaxRequests 1; "
            "consecutive5xxErrors 1)"
            + (" WITHOUT its trafficPolicy (--break)" if breaking else ""),
            "waypoint Envoy's v1 cluster: max_requests 1 "
            + (
                f"in effect after {took:.1f}s"
                if limits_seen
                else "NOT seen (admin /clusters)"
                + (": the DestinationRule has no limits (--break)" if breaking else "")
            ),
            f"v1 pods slowed to 200 ms; 200 requests, {CONCURRENCY} concurrent: statuses "
            f"{burst.get('statuses')}, x-envoy-overloaded on {overloaded}, "
            f"p50 {burst.get('latency_ms', {}).get('p50')} ms",
            f"waypoint istio_requests_total{{response_flags=UO}} +{uo:g}",
            f"{bad.name} answers 503: 100 sequential requests -> statuses "
            f"{trickle.get('statuses')}; {bad.name} got {hit_bad} of them (503), "
            f"{good.name} served {served}; Envoy: "
            + ("ejected (failed_outlier_check)" if ejected else "not marked ejected"),
        ),
    )


def check_l7_authorization(world: DemoWorld) -> CheckResult:
    """12. L7 authorization at the waypoint: GET allowed, POST denied with 403, counted."""
    title = "L7 authorization at the waypoint: GET allowed, POST 403, the denial counted"
    if world.l7_missing:
        return _not_run(12, title, world.l7_missing)
    policy = L7 / "authorization-get-only.yaml"
    breaking = "no-l7-authorization" in world.config.sabotage
    if not breaking:
        world.apply(policy)
    _poll(
        lambda: status_count(world.http("frontend", BACKEND_URL, method="POST"), 403) == 1,
        L7_CONVERGE,
    )
    waypoint = _proxy(world, NAMESPACE, "waypoint")
    before = proxy_metrics(world, waypoint)
    gets = world.http("frontend", BACKEND_URL, count=20, concurrency=5)
    posts = world.http("frontend", BACKEND_URL, count=20, concurrency=5, method="POST")
    labels = {"reporter": "waypoint", "response_code": "403"}
    counted = metric_delta(world, waypoint, before, "istio_requests_total", labels=labels, want=20)
    passed = status_count(gets, 200) == 20 and status_count(posts, 403) == 20 and counted >= 20
    if not breaking:
        from lab.manifests.apply import delete_manifests

        delete_manifests(world.lab, [policy])
    return CheckResult(
        12,
        title,
        passed,
        (
            "AuthorizationPolicy: deploy/examples/tutorial-l7/authorization-get-only.yaml "
            "(targetRefs Service backend; ALLOW methods GET)"
            + (" NOT applied (--break)" if breaking else ""),
            f"GET x20: statuses {gets.get('statuses')}",
            f"POST x20: statuses {posts.get('statuses')}",
            f"waypoint istio_requests_total{{response_code=403}} +{counted:g}",
        ),
    )


def check_ingress(world: DemoWorld) -> CheckResult:
    """13. Ingress: the tutorial's curl http://<gateway>/ from outside the mesh."""
    title = f"ingress: outside -> curl http://{INGRESS_HOST}/ answers from frontend"
    if world.ingress_missing:
        return _not_run(13, title, world.ingress_missing)
    gateway = _proxy(world, "istio-system", "istio-ingressgateway")
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    by_name = world.lab.exec(
        "outside",
        [
            "curl",
            "-s",
            "-i",
            "-m",
            "3",
            "-H",
            f"traceparent: 00-{trace_id}-{parent_id}-01",
            f"http://{INGRESS_HOST}/",
        ],
        timeout=20,
    )
    address = gateway.ip if gateway is not None else ""
    by_address = (
        world.lab.exec("outside", ["curl", "-s", "-m", "3", f"http://{address}/"], timeout=20)
        if address
        else None
    )
    head, _, body = by_name.stdout.replace("\r\n", "\n").partition("\n\n")
    first_line = body.strip().splitlines()[0] if body.strip() else repr(by_name.stderr[-80:])
    server = next(
        (
            line.split(":", 1)[1].strip()
            for line in head.splitlines()
            if line.lower().startswith("server:")
        ),
        "",
    )
    answered_name = "Hello from frontend" in body
    answered_address = by_address is not None and "Hello from frontend" in by_address.stdout
    passed = answered_name and answered_address and "envoy" in server
    spans = traced_spans(world, trace_id)
    listeners = (
        pod_curl(world, gateway, "http://127.0.0.1:15000/listeners").split()
        if gateway is not None
        else []
    )
    return CheckResult(
        13,
        title,
        passed,
        (
            f"ambient lab exec outside -- curl http://{INGRESS_HOST}/: "
            + (
                f"{head.splitlines()[0] if head else 'no answer'}, server {server or '?'}, "
                f"body {first_line}"
            ),
            f"by address http://{address or '?'}/: "
            + ("Hello from frontend" if answered_address else "NO ANSWER"),
            "outside is on the fabric, in no mesh; the gateway pod (istio-system, "
            "istio: ingressgateway) reaches frontend over HBONE with its own identity",
            f"the gateway's Envoy listeners (admin /listeners): {listeners or 'none'}",
            f"trace {trace_id} (traceparent sent by curl) at the lab's collector: "
            + (
                ", ".join(f"{sp.service} {sp.kind.lower() or 'span'} {sp.name}" for sp in spans)
                if spans
                else "no spans (yet)"
            ),
        ),
    )


def traced_spans(world: DemoWorld, trace_id: str) -> list[Any]:
    """The spans of one trace in the lab's collector snapshot (waiting up to 6 s for
    Envoy's flush); [] when there are none."""
    from lab import traces

    found: list[Any] = []

    def arrived() -> bool:
        try:
            spans = traces.read_snapshot(world.lab.run_dir / traces.SNAPSHOT_NAME)
        except traces.TraceError:
            return False
        found[:] = traces.spans_of_trace(spans, trace_id)
        return bool(found)

    _poll(arrived, 6.0)
    return found


L7_CHECKS: tuple[Callable[[DemoWorld], CheckResult], ...] = (
    check_canary,
    check_header_routing,
    check_retries,
    check_circuit_breaking,
    check_l7_authorization,
    check_ingress,
)
