"""Shared fixtures: where the real photos are, and small picks from them."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
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


def real_chips(faces: Path, n_people: int, n_photos: int):
    """Aligned chips of every face found in `n_photos` photos of `n_people` people of lfw62 (250 px, aligned)
    and of lfw62-150px (small, unaligned), of a two-face photo and of a 240p photo: (n, 150, 150, 3) uint8."""
    import numpy as np

    from preprocessor.faces import align_face, detect_faces
    from preprocessor.images import decode_image
    paths = [p for sub in ("lfw62", "lfw62-150px") for photos in pick_people(faces, n_people, n_photos, sub).values()
             for p in photos]
    paths += [faces / "wild" / "two_people.jpg", faces / "wild" / "obama-240p.jpg"]
    out = []
    for p in paths:
        image = decode_image(p.read_bytes(), 40_000_000)
        out += [align_face(image, box) for box in detect_faces(image)]
    assert len(out) >= len(paths) + 1  # every photo has a face, two_people.jpg two
    return np.stack(out)


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


def pytest_sessionfinish(session, exitstatus):
    """Stacks stopped in the background (test/stack.Stacks.close) are gone before the session ends."""
    from test.stack import STACKS, forget_seeds, join_stopping
    join_stopping()
    forget_seeds()
    late = [(s.log, line) for s in STACKS for line in s.alarms()]
    if late:  # logged while stopping, after the last test's check
        print("\nuWSGI alarms logged while stacks stopped:\n" + "\n".join(f"{log}: {line}" for log, line in late))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _stacks(mktemp) -> Iterator:
    from test.stack import Stacks
    factory = Stacks(mktemp)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def stacks(tmp_path) -> Iterator:
    """The stack factory (test/stack.Stacks) for one test: whatever it started is stopped when the test ends."""
    yield from _stacks(lambda name: tmp_path / name)


@pytest.fixture(scope="module")
def module_stacks(tmp_path_factory, request) -> Iterator:
    """The stack factory for a module's shared stacks, stopped when the module ends."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    yield from _stacks(lambda name: tmp_path_factory.mktemp(f"{module}-{name}"))


@pytest.fixture(scope="module")
def stack(module_stacks, request):
    """The real service shared by a module's tests, in a data folder of its own: 2 workers, or what the
    module's `STACK` dict says (`workers`, `env`)."""
    options = {"workers": 2, **getattr(request.module, "STACK", {})}
    return module_stacks.start("data", **options)


# --- markers: what a test needs, so that `make test-fast` can run the quick ones alone -----------------
STACK_FIXTURES = {"stack", "stacks", "module_stacks"}
KINDS = ("stack", "browser", "docker", "slow")


def pytest_collection_modifyitems(config, items):
    """`stack` on every test that starts the real service through the factory (by its fixtures; modules that
    start processes otherwise say so with `pytestmark`); `unit` on every test marked none of stack, browser,
    docker, slow (a browser test also starts a stack)."""
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("stack"):
            item.add_marker(pytest.mark.stack)
        if not any(item.get_closest_marker(kind) for kind in KINDS):
            item.add_marker(pytest.mark.unit)


# `make test` runs two pytest processes (xdist, --dist loadfile): the tests of one file run together in one
# process, in their file order (they share the module's stack, and a later test may count on what an earlier
# one did to it); two files run at once, and one's CPU fills the time the other's stack spends waiting (on
# ZeroMQ, HTTP polls, its processes' start and stop).
