"""The repository itself: no tracked file holds a merge-conflict marker (one reached README.md on main)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# "=======" alone is also a Markdown heading underline: the two ends of a block are what cannot be anything else
MARKER = re.compile(rb"^(<<<<<<<|>>>>>>>)( |$)", re.MULTILINE)


def conflict_markers(root: Path) -> list[str]:
    """`path:line` of every conflict marker in the files git tracks under `root`."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    found = []
    for name in filter(None, files.split(b"\0")):
        path = root / name.decode()
        if not path.is_file():
            continue
        data = path.read_bytes()
        for m in MARKER.finditer(data):
            line = data.count(b"\n", 0, m.start()) + 1
            found.append(f"{name.decode()}:{line}")
    return found


def test_no_tracked_file_holds_a_conflict_marker():
    assert conflict_markers(ROOT) == []


def test_the_check_finds_a_conflict_block(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "README.md").write_text("a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> main\nd\n")
    (tmp_path / "ok.md").write_text("a heading\n=======\nnot a marker: <<<<<<<x\n>>>>>>>>\n")
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    assert conflict_markers(tmp_path) == ["README.md:2", "README.md:6"]
