"""A web process serves predictions from many threads: dlib's models must give each thread the right
answer. (Without a lock per model, concurrent threads got other photos' embeddings and, now and then,
corrupted the heap: the soak's web processes died of SIGSEGV.)"""
from __future__ import annotations

import threading

import numpy as np

from features.embeddings import embed_chips
from preprocessor.faces import align_face, detect_faces
from preprocessor.images import decode_image


def embed(image: np.ndarray) -> np.ndarray | None:
    boxes = detect_faces(image)
    return embed_chips([align_face(image, boxes[0])])[0] if boxes else None


def test_concurrent_threads_get_the_same_embeddings_as_one_thread(faces_dir):
    paths = sorted((faces_dir / "lfw62").glob("*/*.jpg"))[:24]
    images = [decode_image(p.read_bytes(), 10**8) for p in paths]
    alone = [embed(im) for im in images]
    got: dict[tuple[int, int], np.ndarray | None] = {}

    def run(k: int) -> None:
        for i in range(len(images)):
            j = (i + 5 * k) % len(images)
            got[(k, j)] = embed(images[j])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wrong = [(k, j) for (k, j), v in got.items()
             if (v is None) != (alone[j] is None) or (v is not None and not np.allclose(v, alone[j], atol=1e-6))]
    assert not wrong, f"{len(wrong)} of {len(got)} embeddings differ when threads run at once"
