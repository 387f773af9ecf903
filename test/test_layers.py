"""Each process loads only what it runs (docs/architecture.md, "Layout"): a fresh interpreter imports one
process's entry module, and what it then holds in sys.modules is checked. lint-imports checks the static
rules (pyproject.toml); this checks what really loads, lazy imports of the domain packages included."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WATCHED = ("flask", "werkzeug", "deap", "tensorflow", "keras", "app.web", "app.broker", "app.worker", "app.cli")

# entry module -> what its process must not load
PROCESSES = {
    "app.web.wsgi": ("deap", "app.broker", "app.worker", "app.cli"),
    "app.broker.loop": ("flask", "werkzeug", "tensorflow", "keras", "app.web", "app.worker", "app.cli"),
    "app.worker.loop": ("flask", "werkzeug", "app.web", "app.broker", "app.cli"),
    "app.worker.tasks": ("flask", "werkzeug", "app.web", "app.broker", "app.cli"),
    "app.cli.main": ("flask", "werkzeug", "deap", "tensorflow", "keras", "app.web", "app.broker", "app.worker"),
}


def loaded(module: str, tmp_path: Path) -> set[str]:
    """The watched packages (and app's own) that `import module` leaves in a fresh interpreter's sys.modules."""
    code = (f"import sys, json; import {module}; "
            "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in "
            f"{sorted({w.split('.')[0] for w in WATCHED})!r} or n.startswith('app'))))")
    env = {**os.environ, "FR_DATA_DIR": str(tmp_path), "FR_WARM_UP": "0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def held(names: set[str], package: str) -> list[str]:
    return sorted(n for n in names if n == package or n.startswith(package + "."))


@pytest.mark.parametrize("module", sorted(PROCESSES))
def test_each_process_loads_only_what_it_runs(module, tmp_path):
    names = loaded(module, tmp_path)
    assert module in names  # the check looked at the right interpreter
    wrong = {package: held(names, package)[:5] for package in PROCESSES[module] if held(names, package)}
    assert wrong == {}, f"{module} loads {wrong}"


def test_the_app_package_imports_nothing(tmp_path):
    assert loaded("app", tmp_path) == {"app"}
