"""Shared fixtures: where the real photos are, and small picks from them."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces")).resolve()

# No per-example deadline: Hypothesis' default (200 ms) is a timing threshold, and on a shared machine a
# stalled process fails a right test with it (test_genome's random genome, 0.1 ms an example, once took
# 1.5 s under a load of 14 on 2 cores). Speed is measured in bench/, never asserted in tests.
hypothesis_settings.register_profile("no-deadline", deadline=None)
hypothesis_settings.load_profile("no-deadline")


def pytest_report_header(config):
    return f"faces: {FACES} ({'present' if FACES.exists() else 'MISSING'})"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not FACES.exists():
        pytest.fail(f"real photos not found at {FACES}; set FR_FACES_DIR")
    return FACES


def pick_people(faces: Path, n_people: int, n_photos: int, subset: str = "lfw62") -> dict[str, list[Path]]:
    """The first `n_people` (alphabetically) with at least `n_photos` photos, `n_photos` each (sorted)."""
    out = {}
    for person in sorted((faces / subset).iterdir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= n_photos:
            out[person.name] = photos[:n_photos]
        if len(out) == n_people:
            break
    return out


def side_by_side(small: Path, large: Path) -> bytes:
    """A JPEG of two real photos: `large` on the left at 320 px, `small` on the right at 200 px."""
    import io

    from PIL import Image
    canvas = Image.new("RGB", (560, 340), "white")
    canvas.paste(Image.open(large).convert("RGB").resize((320, 320)), (0, 10))
    canvas.paste(Image.open(small).convert("RGB").resize((200, 200)), (340, 70))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(autouse=True)
def no_uwsgi_alarms():
    """Fail a test during which any running stack logged a harakiri or lost a web process
    (test/stack.UWSGI_ALARMS): such a failure must never pass because a retry hid it."""
    from test.stack import STACKS
    for s in STACKS:
        s.alarms()  # what earlier tests saw is theirs
    yield
    seen = [(s.log, line) for s in STACKS for line in s.alarms()]
    if seen:
        pytest.fail("the service logged uWSGI alarms during this test:\n" +
                    "\n".join(f"{log}: {line}" for log, line in seen[:10]))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request):
    """The real service (2 workers) shared by a module's tests, in a data folder of its own.
    A module that needs other settings defines its own `stack`."""
    from test.stack import Stack
    with Stack(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]), workers=2) as s:
        yield s
