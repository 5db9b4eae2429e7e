"""The big-folder poll (``FolderSource._poll``) finds every change a full load finds.

``watch()`` polls folders of more than ``AMBIENT_FOLDER_THREAD_THRESHOLD`` files with
``_poll``: it lists only folders whose mtime moved, reads only files whose inode
changed, sweeps stats every ``FULL_SCAN_INTERVAL`` for in-place edits, and patches the
previous state instead of merging every file when nothing is duplicated or wrong.
After random sequences of atomic writes, in-place edits, deletions, duplicates, bad
files and new subfolders, the polled state must equal what ``load()`` (a full stat scan
and merge) gives a second source that saw the same history.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from controlplane.model import ClusterState
from controlplane.sources import FolderSource
from controlplane.sources import folder as folder_module

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n"


def pod(name: str, app: str, namespace: str = "demo") -> str:
    return (
        "apiVersion: v1\nkind: Pod\n"
        f"metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {app}}}}}\n"
        "spec: {nodeName: node1, containers: [{name: app}]}\n"
        "status: {phase: Running, podIP: 10.244.1.9}\n"
    )


def atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def same(a: ClusterState, b: ClusterState) -> bool:
    return (
        a.same_objects(b) and set(a.errors) == set(b.errors) and set(a.warnings) == set(b.warnings)
    )


def mutate(root: Path, rng: random.Random, step: int, in_place: bool) -> None:
    files = sorted(p for p in root.rglob("*.yaml") if not p.name.startswith("."))
    action = rng.choice(["add", "change", "delete", "duplicate", "bad", "subfolder", "noop"])
    target = rng.choice(files) if files else root / "p0.yaml"
    if action == "add" or not files:
        atomic(root / f"p{step}.yaml", pod(f"p{step}", "a"))
    elif action == "change":
        text = pod(target.stem, f"v{step}")
        if in_place:
            target.write_text(text)
        else:
            atomic(target, text)
    elif action == "delete":
        target.unlink()
    elif action == "duplicate":
        atomic(root / f"dup{step}.yaml", target.read_text())
    elif action == "bad":
        atomic(target, "kind: Pod\nmetadata: {name: [}\n")
    elif action == "subfolder":
        sub = root / f"sub{step}"
        sub.mkdir()
        atomic(sub / "x.yaml", pod(f"sub{step}", "s"))
    else:
        atomic(root / f"notes{step}.txt", "not yaml")


@pytest.mark.parametrize("seed", range(6))
def test_poll_after_atomic_writes_equals_a_fresh_load(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    (tmp_path / "ns.yaml").write_text(NAMESPACE)
    for i in range(20):
        (tmp_path / f"p{i}.yaml").write_text(pod(f"p{i}", "a"))
    source, reference = FolderSource(tmp_path), FolderSource(tmp_path)
    source.load()
    reference.load()
    for step in range(100, 130):
        mutate(tmp_path, rng, step, in_place=False)
        assert same(source._poll(), reference.load()), step


def test_in_place_edits_are_found_by_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ns.yaml").write_text(NAMESPACE)
    (tmp_path / "a.yaml").write_text(pod("a", "one"))
    source, reference = FolderSource(tmp_path), FolderSource(tmp_path)
    source.load()
    reference.load()
    monkeypatch.setattr(folder_module, "FULL_SCAN_INTERVAL", 0.0)
    rng = random.Random(7)
    for step in range(20):
        mutate(tmp_path, rng, step, in_place=True)
        assert same(source._poll(), reference.load()), step


def test_an_unchanged_folder_is_one_stat_per_folder(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"p{i}.yaml").write_text(pod(f"p{i}", "a"))
    source = FolderSource(tmp_path)
    state = source.load()
    os.utime(tmp_path, ns=(1, 1))  # an old mtime: the folder is not "racy"
    source._folders = {str(tmp_path): (1, 10**18)}
    (tmp_path / "p1.yaml").write_text(pod("p1", "changed-in-place"))
    assert source._poll() is state  # not listed, not swept yet
    atomic(tmp_path / "p2.yaml", pod("p2", "renamed-over"))
    assert source._poll().pods[("demo", "p2")].labels["app"] == "renamed-over"


def test_watch_on_a_big_folder_reports_a_rename_within_half_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMBIENT_FOLDER_THREAD_THRESHOLD", "10")
    for i in range(30):
        (tmp_path / f"p{i}.yaml").write_text(pod(f"p{i}", "a"))

    async def main() -> float:
        loop = asyncio.get_running_loop()
        states = FolderSource(tmp_path).watch(interval=0.02)
        await anext(states)
        await asyncio.sleep(0.1)
        started = loop.time()
        atomic(tmp_path / "p5.yaml", pod("p5", "new"))
        async for state in states:
            if state.pods[("demo", "p5")].labels["app"] == "new":
                return loop.time() - started
        raise AssertionError("watch ended")

    assert asyncio.run(asyncio.wait_for(main(), 5)) < 0.5
