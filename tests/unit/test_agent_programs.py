"""Preparing the C of bpf/ for BCC: our quoted includes inlined, once, with #line markers."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ProgramLoadError
from agent.programs import PROGRAMS, inline_local_includes


def test_shared_headers_are_inlined_once_and_system_includes_kept() -> None:
    text = inline_local_includes(PROGRAMS["pod_egress"])
    assert '#include "' not in text
    assert "#include <uapi/linux/bpf.h>" in text
    assert text.count("struct workload_value {") == 1  # maps.h reached twice, inlined once
    assert "int pod_egress(struct __sk_buff *skb)" in text
    assert f'#line 1 "{PROGRAMS["pod_egress"].parent / "include" / "capture.h"}"' in text


def test_line_markers_point_back_at_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "inc.h").write_text("int shared;\n")
    (tmp_path / "prog.c").write_text('// one\n#include "inc.h"\nint after;\n')
    lines = inline_local_includes(tmp_path / "prog.c").splitlines()
    assert lines[0] == "// one"
    assert lines[1] == f'#line 1 "{tmp_path / "inc.h"}"'
    assert lines[2] == "int shared;"
    assert lines[3] == f'#line 3 "{tmp_path / "prog.c"}"'
    assert lines[4] == "int after;"


def test_a_missing_include_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "prog.c").write_text('#include "nope.h"\n')
    with pytest.raises(ProgramLoadError, match=r"prog\.c:1: included file 'nope\.h' not found"):
        inline_local_includes(tmp_path / "prog.c")


def test_every_program_has_a_header_comment_saying_where_it_attaches() -> None:
    for name, path in PROGRAMS.items():
        head = path.read_text()[:1500]
        assert "attaches" in head or "TC ingress" in head, name
        assert f"int {name}(struct __sk_buff *skb)" in path.read_text()


def test_the_compiler_child_reports_bad_usage() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "agent.programs"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "usage: python -m agent.programs PIN_DIR" in done.stderr
