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


PRODUCT = ("app", "constants", "preprocessor", "features", "modelization", "optimization", "logger", "dumps")


def long_pieces(root: Path, max_function: int = 60, max_class: int = 300,
                classes_under: str = "app/broker") -> list[str]:
    """Product functions over `max_function` lines, and classes under `classes_under` over `max_class`."""
    import ast
    found = []
    files = [root / "run.py", *(f for pkg in PRODUCT for f in sorted((root / pkg).rglob("*.py")))]
    for path in files:
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            size = (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, "lineno") else 0
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and size > max_function:
                found.append(f"{rel}:{node.lineno} {node.name}() is {size} lines")
            elif isinstance(node, ast.ClassDef) and rel.startswith(classes_under) and size > max_class:
                found.append(f"{rel}:{node.lineno} class {node.name} is {size} lines")
    return found


def test_no_product_function_over_60_lines_and_no_broker_part_over_300():
    assert long_pieces(ROOT) == []


def test_the_size_check_finds_a_long_function_and_a_long_broker_class(tmp_path):
    (tmp_path / "app" / "broker").mkdir(parents=True)
    (tmp_path / "run.py").write_text("def short():\n    return 1\n")
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    (tmp_path / "app" / "long.py").write_text(f"def long():\n{body}")
    methods = "".join(f"    def m{i}(self):\n        return {i}\n" for i in range(150))
    (tmp_path / "app" / "broker" / "part.py").write_text(f"class Part:\n{methods}")
    assert long_pieces(tmp_path) == ["app/broker/part.py:1 class Part is 301 lines", "app/long.py:1 long() is 61 lines"]
