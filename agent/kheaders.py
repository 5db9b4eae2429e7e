"""Kernel headers for BCC.

BCC compiles our programs at load time and needs a kernel header tree. Our programs use
only UAPI structures, so where the running kernel has no headers package (custom or
cloud kernels), the distribution's generic headers serve. Debian splits those into an
``-common`` and an arch-specific directory; BCC wants one tree, so we build a merged
tree of symlinks in a cache folder we own and point ``BCC_KERNEL_SOURCE`` at it.
Nothing outside that folder is written.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
from pathlib import Path

from agent.errors import KernelHeadersError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".build" / "kernel-headers"
_ARCH_SUFFIX = {"x86_64": "amd64", "aarch64": "arm64"}


def running_kernel_build_dir() -> Path | None:
    """The running kernel's own header tree, when a package installed it."""
    build = Path("/lib/modules") / platform.release() / "build"
    return build if (build / "include").is_dir() else None


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", Path(path).name))


def find_generic_headers() -> tuple[Path, Path] | None:
    """(arch dir, common dir) of the newest distribution header package, if any."""
    suffix = _ARCH_SUFFIX.get(platform.machine(), platform.machine())
    arch_dirs = sorted(glob.glob(f"/usr/src/linux-headers-*-{suffix}"), key=_version_key)
    for arch_dir in reversed(arch_dirs):
        common = Path(arch_dir[: -len(suffix)] + "common")
        if common.is_dir():
            return Path(arch_dir), common
    return None


def merged_tree(cache: Path = DEFAULT_CACHE) -> Path:
    """Builds (once) and returns a merged symlink tree of the generic headers."""
    found = find_generic_headers()
    if found is None:
        raise KernelHeadersError(
            "no kernel headers found for BCC: /lib/modules/"
            f"{platform.release()}/build is missing and no /usr/src/linux-headers-* exists",
            hint="install the distribution's generic headers (apt-get install "
            "linux-headers-amd64) or the running kernel's headers package",
        )
    arch_dir, common = found
    target = cache / arch_dir.name
    marker = target / ".complete"
    if marker.exists():
        return target
    tmp = cache / f".{arch_dir.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for source in (common, arch_dir):  # arch files (generated headers, .config) win
        _link_tree(source, tmp)
    (tmp / ".complete").write_text(f"{common}\n{arch_dir}\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _link_tree(source: Path, dest: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(source, followlinks=True):
        rel = Path(dirpath).relative_to(source)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            link = dest / rel / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(Path(dirpath) / name)


def configure_bcc_environment(cache: Path = DEFAULT_CACHE) -> Path | None:
    """Sets ``BCC_KERNEL_SOURCE`` when BCC would not find headers by itself.

    Must run before BCC compiles anything. Returns the tree used, or None when the
    running kernel's own headers are installed.
    """
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return Path(os.environ["BCC_KERNEL_SOURCE"])
    if running_kernel_build_dir() is not None:
        return None
    tree = merged_tree(cache)
    os.environ["BCC_KERNEL_SOURCE"] = str(tree)
    return tree
