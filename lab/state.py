"""The lab's state file: JSON under the run folder, changed under a file lock.

Several processes may act on one lab (the builder, ``ambient lab add-service`` from a
shell, a test); each change is read-modify-write under ``flock`` so none is lost.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lab.errors import LabBusyError, LabError, LabNotFoundError
from lab.model import LabState
from lab.objects import write_atomic

STATE_FILE = "state.json"
LOCK_FILE = ".lock"
LOCK_TIMEOUT = 10.0


class StateStore:
    """Reads and writes one lab's ``state.json``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / STATE_FILE

    def exists(self) -> bool:
        """Whether a state was saved."""
        return self.path.exists()

    def load(self) -> LabState:
        """The saved state; raises :class:`LabNotFoundError` when there is none."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError as err:
            raise LabNotFoundError(
                f"no lab state at {self.path}",
                hint="start one with 'ambient lab up', or list them with 'ambient lab status'",
            ) from err
        except (OSError, ValueError) as err:
            raise LabError(
                f"the lab state {self.path} cannot be read: {err}",
                hint="'ambient lab down --name <name>' still removes the lab by its name prefix",
            ) from err
        try:
            return LabState.from_json(data)
        except (KeyError, TypeError, ValueError) as err:
            raise LabError(f"the lab state {self.path} is malformed: {err}") from err

    def save(self, state: LabState) -> None:
        """Writes ``state`` atomically."""
        write_atomic(self.path, json.dumps(state.to_json(), indent=2) + "\n", mode=0o600)

    @contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Holds the lab's lock (exclusive ``flock``) for a read-modify-write."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LabBusyError(
                            f"the lab at {self.run_dir} stayed locked for {timeout:.0f}s",
                            hint="another lab command is still running; try again",
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)
