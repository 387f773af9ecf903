"""A web process serves predictions from many threads (uWSGI: 16 per process): the face models and
either embedder must give each thread the right answer. (Without a lock per dlib model, concurrent
threads got other photos' embeddings and, now and then, corrupted the heap: the soak's web processes
died of SIGSEGV.)"""
from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from constants import EMBEDDERS, Settings
from features.embeddings import _tensorflow, embed_chips
from preprocessor.faces import align_face, detect_faces
from preprocessor.images import decode_image

THREADS = 16  # app.ini's threads per web process
# Not `unit`: no service, but minutes of CPU (every photo detected, aligned and embedded again in each thread,
# which is how a race shows); `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=EMBEDDERS)
def settings(request, tmp_path_factory) -> Settings:
    return Settings.from_env(data_dir=tmp_path_factory.mktemp("threads"), embedder=request.param)


@pytest.fixture(scope="module")
def images(faces_dir) -> list[np.ndarray]:
    paths = sorted((faces_dir / "lfw62").glob("*/*.jpg"))[:24] + [faces_dir / "wild" / "two_people.jpg"]
    return [decode_image(p.read_bytes(), 10**8) for p in paths]


def run_threads(n: int, work: Callable[[int], None]) -> None:
    """`work(k)` in n threads started together (a barrier: they really overlap)."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            barrier.wait()
            work(k)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def faces_of(image: np.ndarray, settings: Settings, mirror: bool = False) -> np.ndarray | None:
    """The whole path of a prediction's faces: detect, align, every face embedded in one batch."""
    boxes = detect_faces(image)
    return embed_chips([align_face(image, b) for b in boxes], mirror, settings) if boxes else None


def differing(got: dict, alone: list) -> list:
    return [(k, j) for (k, j), v in got.items()
            if (v is None) != (alone[j] is None) or (v is not None and not np.allclose(v, alone[j], atol=1e-6))]


def test_concurrent_threads_get_the_same_embeddings_as_one_thread(images, settings):
    alone = [faces_of(im, settings) for im in images]
    got: dict[tuple[int, int], np.ndarray | None] = {}

    def work(k: int) -> None:
        for i in range(len(images)):
            j = (i + 5 * k) % len(images)
            got[(k, j)] = faces_of(images[j], settings)

    run_threads(6 if settings.embedder == "dlib" else THREADS, work)
    wrong = differing(got, alone)
    assert not wrong, f"{settings.embedder}: {len(wrong)} of {len(got)} embeddings differ when threads run at once"


def test_tensorflow_embedder_shared_by_16_threads_with_mixed_batches(images, tmp_path):
    """What a web process does under load: one TensorFlow embedder, 16 threads at once, each with its
    own batches (1 chip, a photo's faces, faces with their mirror images, more chips than one run
    takes), every answer the one a single thread gets."""
    from features.chips import MAX_BATCH
    s = Settings.from_env(data_dir=tmp_path, embedder="tensorflow")
    chips = [align_face(im, b) for im in images for b in detect_faces(im)]
    batches = [(chips[i:i + n], mirror) for i, n, mirror in
               [(0, 1, False), (1, 2, True), (3, 5, False), (8, 1, True), (9, 7, False), (0, 3, True)]]
    batches.append((chips * (MAX_BATCH // len(chips) + 1), False))
    alone = [embed_chips(b, mirror, s) for b, mirror in batches]
    got: dict[tuple[int, int], np.ndarray] = {}

    def work(k: int) -> None:
        for i in range(2 * len(batches)):
            j = (i + k) % len(batches)
            got[(k, j)] = embed_chips(batches[j][0], batches[j][1], s)

    run_threads(THREADS, work)
    wrong = differing(got, alone)  # type: ignore[arg-type]
    assert not wrong, f"{len(wrong)} of {len(got)} batches differ when 16 threads share the embedder"


def test_tensorflow_network_itself_runs_from_many_threads_at_once(images, tmp_path):
    """The embedder runs one forward pass at a time per process (memory: features/resnet_tf.py); the
    traced network itself gives the same numbers when threads run it at once without that lock."""
    s = Settings.from_env(data_dir=tmp_path, embedder="tensorflow")
    network = _tensorflow(s.models_dir)._fn
    chips = np.stack([align_face(im, b) for im in images for b in detect_faces(im)])
    batches = [chips[i:i + 4] for i in range(0, len(chips), 4)]
    alone = [network(b).numpy() for b in batches]
    got: dict[tuple[int, int], np.ndarray] = {}

    def work(k: int) -> None:
        for i in range(len(batches)):
            j = (i + 3 * k) % len(batches)
            got[(k, j)] = network(batches[j]).numpy()

    run_threads(8, work)
    wrong = differing(got, alone)  # type: ignore[arg-type]
    assert not wrong, f"{len(wrong)} of {len(got)} runs differ when threads run the network at once"


IMPORT_RACE = r"""
import sys, threading
sys.path.insert(0, sys.argv[1])
from constants import Settings
s = Settings.from_env(data_dir=sys.argv[2], embedder="tensorflow")
barrier, errors = threading.Barrier(3), []

def run(step):
    barrier.wait()
    try:
        step()
    except BaseException as exc:
        errors.append(repr(exc))

def warm_up():  # a web process's warm-up thread: the embedder (TensorFlow) first
    from features.embeddings import resnet_model_path
    from features.resnet_tf import TensorFlowEmbedder
    TensorFlowEmbedder(resnet_model_path(), s.models_dir)

def bundle():  # a request thread loading a bundle meanwhile: Keras
    from modelization.network import NetworkSpec, build_network
    build_network(128, 3, NetworkSpec())

def versions():  # a build's manifest: both
    from app.worker.tasks import software_versions
    software_versions()

threads = [threading.Thread(target=run, args=(f,)) for f in (warm_up, bundle, versions)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("ERRORS", errors)
"""


def test_threads_that_load_tensorflow_and_keras_at_once_all_get_them_whole(tmp_path):
    """A fresh process whose threads import TensorFlow and Keras at the same time (a web process's
    warm-up and its first prediction): without one import lock, one of them got a partially
    initialized module (a 500 on the prediction) or a deadlock error from Python's import locks."""
    import subprocess
    import sys

    from test.stack import ROOT
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", IMPORT_RACE, str(ROOT), str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip().splitlines()[-1] == "ERRORS []", r.stdout[-2000:]
