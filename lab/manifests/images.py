"""Which container images the lab can stand in for, and what it runs for each.

The lab has no container runtime: a pod is a network namespace, and a container is one
of the lab's workload programs run with the container's own arguments. This module
decides, from a container's ``image``, ``command``, ``args`` and ``env``, which program
that is (or that the pod just stays up, like a ``sleep`` container), or why the image
cannot run here. Pure: no processes, no files.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

HTTP_ECHO_PORT = 5678
"""hashicorp/http-echo listens on :5678 unless told otherwise."""

CURL_IMAGES = ("curlimages/curl", "appropriate/curl", "istio/curl")
SLEEP_IMAGES = ("busybox", "alpine", "debian", "ubuntu")
PAUSE_IMAGES = ("pause", "google_containers/pause", "e2e-test-images/pause")
HTTP_ECHO_IMAGES = ("hashicorp/http-echo",)

WHAT_RUNS = (
    "hashicorp/http-echo (an HTTP server; args -text=..., -listen=:PORT), "
    "curlimages/curl (a client pod: 'ambient lab exec POD -- curl ...'), "
    "busybox, alpine, debian or ubuntu running sleep, and registry.k8s.io/pause"
)
"""What the lab can run instead, for error messages."""

_HTTP_ECHO_FLAGS = ("text", "listen")
_SLEEP_SCRIPT = re.compile(r"^\s*(exec\s+)?(sleep\s+\S+|tail\s+-f\s+/dev/null)\s*;?\s*$")
_SHELLS = ("sh", "bash", "ash", "dash")


@dataclass(frozen=True)
class ImageRef:
    """An image reference split the way a container runtime reads it."""

    registry: str
    """``docker.io`` when none was written."""
    repository: str
    """Path without registry, ``library/`` dropped (``busybox``, ``hashicorp/http-echo``)."""
    tag: str
    """``latest`` when neither tag nor digest was written."""


@dataclass(frozen=True)
class Program:
    """A lab workload program standing in for a container, with its arguments."""

    program: str
    """``http-echo`` (see :data:`lab.cluster.WORKLOADS`)."""
    args: tuple[str, ...]
    """Arguments in the image's own syntax (http_echo reads hashicorp's flags)."""
    port: int
    """The TCP port it listens on."""


@dataclass(frozen=True)
class Idle:
    """A container that only keeps the pod up (sleep, pause, a curl client)."""

    note: str = ""
    """Why the container's command is not run, when it is not a plain sleep ('' if it is)."""


@dataclass(frozen=True)
class Refused:
    """An image or command the lab cannot stand in for."""

    field: str
    """``image``, ``args``, ``command`` or ``env`` (relative to the container)."""
    message: str


StandIn = Program | Idle | Refused


def parse_image(image: str) -> ImageRef:
    """Splits ``[registry/]path[:tag][@digest]`` as Docker does (``docker.io`` default)."""
    rest = image.strip()
    digest = ""
    if "@" in rest:
        rest, _, digest = rest.partition("@")
    first, slash, remainder = rest.partition("/")
    registry = "docker.io"
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, rest = first, remainder
    tag = digest or "latest"
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        registry = "docker.io"
        rest = rest.removeprefix("library/")
    return ImageRef(registry=registry, repository=rest, tag=tag)


def stand_in(
    image: str,
    command: Sequence[str],
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> StandIn:
    """What the lab runs for a container with this image, command, args and env."""
    ref = parse_image(image)
    if _is(ref, HTTP_ECHO_IMAGES):
        if command:
            return Refused(
                "command",
                "hashicorp/http-echo is run with its own entrypoint in the lab; "
                "give its flags as args, not command",
            )
        return _http_echo(list(args), dict(env or {}))
    if _is(ref, PAUSE_IMAGES):
        return Idle()
    if _is(ref, CURL_IMAGES):
        return _curl([*command, *args])
    if _is(ref, SLEEP_IMAGES):
        return _sleeper(ref, command, [*command, *args])
    return Refused("image", f"image {image!r} cannot run in the lab; it runs {WHAT_RUNS}")


def _curl(argv: Sequence[str]) -> StandIn:
    """A curl client: the pod stays up; ``curl`` runs through ``ambient lab exec``."""
    if not argv or _is_sleep(argv):
        return Idle()
    return Idle(
        note=f"command {shlex.join(argv)!r} is not run; the pod stays up idle "
        "(run it with 'ambient lab exec POD -- ...')"
    )


def _sleeper(ref: ImageRef, command: Sequence[str], argv: Sequence[str]) -> StandIn:
    """busybox, alpine and the like: only to sleep."""
    if _is_sleep(argv):
        return Idle()
    if not argv:
        return Idle(note=f"{ref.repository} without a command would exit; the pod stays up")
    return Refused(
        "command" if command else "args",
        f"the lab runs {ref.repository} only to sleep, not {shlex.join(argv)!r}; "
        "use command: [sleep, infinity] and 'ambient lab exec POD -- ...'",
    )


def _is(ref: ImageRef, names: Sequence[str]) -> bool:
    return any(ref.repository == n or ref.repository.endswith("/" + n) for n in names)


def _is_sleep(argv: Sequence[str]) -> bool:
    """``sleep N``, ``/bin/sleep infinity``, ``sh -c "sleep 3650d"``, ``tail -f /dev/null``."""
    if not argv:
        return False
    program = argv[0].rsplit("/", 1)[-1]
    if program == "sleep":
        return len(argv) <= 2
    if program in _SHELLS and len(argv) == 3 and argv[1] == "-c":
        return bool(_SLEEP_SCRIPT.match(argv[2]))
    return [program, *argv[1:]] == ["tail", "-f", "/dev/null"]


def _http_echo(args: list[str], env: dict[str, str]) -> StandIn:
    """hashicorp/http-echo's flags (Go style: -flag=v, -flag v, --flag=v)."""
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in _HTTP_ECHO_FLAGS:
            return Refused(
                "args",
                f"hashicorp/http-echo flag {arg!r} is not one the lab's http-echo knows "
                f"(it takes -{' and -'.join(_HTTP_ECHO_FLAGS)})",
            )
        if not eq:
            if i + 1 >= len(args):
                return Refused("args", f"flag {arg!r} needs a value")
            i += 1
            value = args[i]
        values[name] = value
        i += 1
    text = values.get("text", env.get("ECHO_TEXT"))
    if text is None:
        return Refused(
            "args",
            "hashicorp/http-echo needs -text=... (or env ECHO_TEXT); the image exits without",
        )
    listen = values.get("listen", f":{HTTP_ECHO_PORT}")
    port_text = listen.rpartition(":")[2]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return Refused("args", f"-listen={listen!r} is not [host]:port")
    return Program(
        program="http-echo",
        args=(f"-text={text}", f"-listen={listen}"),
        port=int(port_text),
    )
