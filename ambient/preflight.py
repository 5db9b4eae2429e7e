"""What this machine must offer before a command that needs the kernel runs.

Each check answers with a :class:`Check` (PASS/WARN/FAIL plus what to do). Commands call
:func:`require` with the names they need; the first failure becomes a
:class:`~ambient.errors.PreflightError`: one sentence, never a traceback.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ambient.errors import PreflightError

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_MAP_CREATE = 0
_BPF_MAP_TYPE_ARRAY = 2


@dataclass(frozen=True)
class Check:
    """The result of one check."""

    name: str
    status: str  # "PASS", "WARN" or "FAIL"
    detail: str
    fix: str = ""


def check_root() -> Check:
    """Root (or CAP_SYS_ADMIN + CAP_NET_ADMIN + CAP_BPF) is needed for netns and BPF."""
    if os.geteuid() == 0:
        return Check("root", "PASS", "running as root")
    return Check("root", "FAIL", "not running as root", "run it as root (sudo)")


def check_netns() -> Check:
    """Network namespaces and the ip tool."""
    if not Path("/proc/self/ns/net").exists():
        return Check(
            "netns", "FAIL", "kernel has no network namespaces", "use a kernel with CONFIG_NET_NS"
        )
    if shutil.which("ip") is None:
        return Check("netns", "FAIL", "the 'ip' tool is missing", "apt-get install iproute2")
    return Check("netns", "PASS", "network namespaces and iproute2 present")


def check_bpf_syscall() -> Check:
    """The bpf() syscall answers: creates and closes a one-entry array map."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        return Check("bpf", "WARN", f"unknown syscall number on {platform.machine()}")
    attr = (ctypes.c_uint32 * 8)(_BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0, 0, 0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(nr, _BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return Check(
            "bpf",
            "FAIL",
            f"bpf() syscall refused: {os.strerror(err)}",
            "run as root on a kernel with CONFIG_BPF_SYSCALL (and unprivileged limits lifted)",
        )
    os.close(fd)
    return Check("bpf", "PASS", "bpf() syscall works")


def check_bpffs() -> Check:
    """bpffs mounted at /sys/fs/bpf, where programs and maps are pinned."""
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:
        mounts = ""
    if any(line.split()[1:3] == ["/sys/fs/bpf", "bpf"] for line in mounts.splitlines()):
        return Check("bpffs", "PASS", "bpffs mounted at /sys/fs/bpf")
    return Check(
        "bpffs",
        "FAIL",
        "bpffs is not mounted at /sys/fs/bpf",
        "mount -t bpf bpf /sys/fs/bpf (make setup does it)",
    )


def check_kernel_version() -> Check:
    """bpf_sk_assign at TC ingress needs Linux 5.7 or newer."""
    release = platform.release()
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        return Check("kernel", "WARN", f"cannot parse kernel release {release!r}")
    if (major, minor) >= (5, 7):
        return Check("kernel", "PASS", f"Linux {release} (bpf_sk_assign at TC needs 5.7+)")
    return Check(
        "kernel",
        "FAIL",
        f"Linux {release} is older than 5.7",
        "bpf_sk_assign needs Linux 5.7 or newer",
    )


def check_bcc() -> Check:
    """The distribution's BCC is importable (python3-bpfcc, not PyPI's 'bcc').

    Found without importing it: importing BCC loads libbcc (~70 MB) into the caller.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        return Check(
            "bcc",
            "FAIL",
            "the bcc module is not importable",
            "run 'make setup' (installs python3-bpfcc)",
        )
    if "dist-packages" not in spec.origin and "distbcc" not in spec.origin:
        return Check(
            "bcc",
            "WARN",
            f"bcc found at {spec.origin}, not the distribution's python3-bpfcc",
            "PyPI's 'bcc' is an unrelated project: pip uninstall bcc; run 'make setup'",
        )
    return Check("bcc", "PASS", f"BCC found ({spec.origin})")


CHECKS: dict[str, Callable[[], Check]] = {
    "root": check_root,
    "netns": check_netns,
    "kernel": check_kernel_version,
    "bpf": check_bpf_syscall,
    "bpffs": check_bpffs,
    "bcc": check_bcc,
}


def run_checks(names: Iterable[str] | None = None) -> list[Check]:
    """Runs the named checks (all by default), in order."""
    return [CHECKS[name]() for name in (names or CHECKS)]


def require(*names: str, what: str = "this command") -> None:
    """Raises :class:`PreflightError` naming the first unmet need."""
    for name in names:
        result = CHECKS[name]()
        if result.status == "FAIL":
            raise PreflightError(f"{what} needs {name}: {result.detail}", hint=result.fix or None)


def main(argv: list[str]) -> int:
    """``python -m ambient.preflight [CHECK...]``: silent when all pass, else one sentence."""
    names = argv or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"error: unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
        return 2
    try:
        require(*names, what="ambient-node")
    except PreflightError as err:
        print(f"error: {err.message}" + (f" ({err.hint})" if err.hint else ""))
        return err.exit_code
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
