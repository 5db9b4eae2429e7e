"""Compiling and loading the capture programs of ``bpf/`` with BCC.

Each program is one C file per attach point; what they share lives in
``bpf/include/*.h``. BCC rewrites map method calls (``workloads.lookup(...)``) only in
the file it compiles, not in included headers, so before compiling we inline our own
quoted includes into one translation unit (``#line`` markers keep compiler messages
pointing at the real file and line). System includes (``<uapi/...>``) stay includes.

The maps are declared with ``BPF_TABLE_PINNED`` under ``PIN_DIR``: the first load
creates and pins them, every later load (the other program, a restarted agent) opens
the pinned ones, so programs and agents share one set of maps per node.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ProgramLoadError
from agent.kheaders import configure_bcc_environment

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')

# program name -> C file; the function inside has the same name
PROGRAMS: dict[str, Path] = {
    "pod_egress": BPF_DIR / "pod_egress.c",
    "node_ingress": BPF_DIR / "node_ingress.c",
    "probe": BPF_DIR / "probe.c",  # the toolchain check; captures nothing
}


def inline_local_includes(path: Path, seen: set[Path] | None = None) -> str:
    """The C source of ``path`` with its quoted includes inlined, once each, recursively."""
    seen = set() if seen is None else seen
    out: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _LOCAL_INCLUDE.match(line)
        if match is None:
            out.append(line)
            continue
        included = (path.parent / match.group(1)).resolve()
        if not included.is_file():
            raise ProgramLoadError(
                f"{path}:{number}: included file {match.group(1)!r} not found",
                hint="the bpf/ folder of the installation is incomplete; reinstall",
            )
        if included not in seen:
            seen.add(included)
            out.append(f'#line 1 "{included}"')
            out.append(inline_local_includes(included, seen).rstrip("\n"))
        out.append(f'#line {number + 1} "{path}"')
    return "\n".join(out) + "\n"


def cflags_for(pin_dir: Path | None) -> list[str]:
    """Compiler flags: where the maps are pinned (a C string literal), when they are."""
    return [f'-DPIN_DIR="{pin_dir}"'] if pin_dir is not None else []


@dataclass
class LoadedProgram:
    """A program loaded into the kernel; ``bpf`` keeps BCC's module (and its fds) alive."""

    name: str
    fd: int
    bpf: Any


def compile_source(path: Path, pin_dir: Path | None, extra_cflags: list[str] | None = None) -> Any:
    """Compiles one C file of ``bpf/`` with BCC, pinned maps (if any) under ``pin_dir``."""
    configure_bcc_environment()
    from bcc import BPF

    if pin_dir is not None:
        pin_dir.mkdir(parents=True, exist_ok=True)
    text = inline_local_includes(path)
    try:
        return BPF(text=text.encode(), cflags=[*cflags_for(pin_dir), *(extra_cflags or [])])
    except Exception as err:
        raise ProgramLoadError(
            f"BCC could not compile {path.name}: {err}",
            hint="the compiler messages above name the line; check kernel headers "
            "(python -m ambient.buildenv headers) and that maps pinned under "
            f"{pin_dir} have the layout of bpf/include/maps.h "
            "(an older layout: run 'ambient agent cleanup')",
        ) from err


def load_program(
    name: str, pin_dir: Path | None, extra_cflags: list[str] | None = None
) -> LoadedProgram:
    """Compiles and loads one program of :data:`PROGRAMS` as a TC (SCHED_CLS) program."""
    from bcc import BPF

    module = compile_source(PROGRAMS[name], pin_dir, extra_cflags)
    try:
        fn = module.load_func(name.encode(), BPF.SCHED_CLS)
    except Exception as err:
        raise ProgramLoadError(
            f"the kernel refused program {name}: {err}",
            hint="the verifier log above says why; the kernel needs TC BPF and "
            "bpf_sk_assign (Linux 5.7+)",
        ) from err
    return LoadedProgram(name=name, fd=int(fn.fd), bpf=module)


CAPTURE_PROGRAMS = ("pod_egress", "node_ingress")
CHILD_TIMEOUT_S = 180.0


def pinned_program_path(pin_dir: Path, name: str) -> Path:
    """Where program ``name`` is pinned."""
    return pin_dir / f"prog_{name}"


def compile_and_pin(pin_dir: Path) -> None:
    """Loads both capture programs and pins them (maps are pinned by BCC itself)."""
    from agent.pinned import pin

    for name in CAPTURE_PROGRAMS:
        program = load_program(name, pin_dir)
        pin(program.fd, pinned_program_path(pin_dir, name))


def load_in_child(pin_dir: Path) -> dict[str, LoadedProgram]:
    """Compiles and pins the capture programs in a short-lived child; opens the pins.

    BCC keeps LLVM (well over 100 MB) in the process that compiled, for good; the
    agent runs for the node's lifetime, so the compiler runs in a child that exits.
    """
    from agent.pinned import obj_get

    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.programs", str(pin_dir)],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise ProgramLoadError(
            f"compiling the capture programs took longer than {CHILD_TIMEOUT_S:.0f}s"
        ) from err
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-3000:]
        raise ProgramLoadError(
            f"the capture programs did not compile or load: {loader_child_reason(done)}",
            hint=tail or None,
        )
    return {
        name: LoadedProgram(name=name, fd=obj_get(pinned_program_path(pin_dir, name)), bpf=None)
        for name in CAPTURE_PROGRAMS
    }


def run_loader_child(work: Callable[[], None]) -> int:
    """A loader child's exit code for ``work``: 0, or 1 with the error and its hint as
    ``error:`` and ``hint:`` lines on stderr, where the parent reads them."""
    from ambient.errors import AmbientError

    try:
        work()
    except AmbientError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 1
    return 0


def loader_child_reason(done: subprocess.CompletedProcess[str]) -> str:
    """Why a loader child failed: its last ``error:`` line (:func:`run_loader_child`),
    else its last line of output (a traceback's), else its exit code."""
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return (errors or lines or [f"exit code {done.returncode}"])[-1]


def _main(argv: list[str]) -> int:
    """``python -m agent.programs PIN_DIR``: the child of :func:`load_in_child`."""
    if len(argv) != 1:
        print("usage: python -m agent.programs PIN_DIR", file=sys.stderr)
        return 2
    return run_loader_child(lambda: compile_and_pin(Path(argv[0])))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
