"""The model bundle: a zip holding `model.keras`, `labels.json`, `gallery.npz`, `manifest.json` and
`MODEL_CARD.md`.

`pack_bundle` runs in the worker (which may be on another host); the broker
receives the bytes and `save_bundle` writes them atomically to `dumps/<id>/`.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

BUNDLE_FILE = "model.zip"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
GALLERY_FILE = "gallery.npz"
CARD_FILE = "MODEL_CARD.md"


def pack_bundle(model, labels: list[str], manifest: dict, gallery_x=None, gallery_y=None,
                card: str | None = None) -> bytes:
    """Serialise a Keras model, its class labels, manifest, gallery embeddings and model card into zip bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / MODEL_FILE
        model.save(model_path)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(model_path, MODEL_FILE)
            if gallery_x is not None:
                g = io.BytesIO()
                np.savez_compressed(g, embeddings=np.asarray(gallery_x, np.float32),
                                    labels=np.asarray(gallery_y, np.int32))
                zf.writestr(GALLERY_FILE, g.getvalue())
            zf.writestr(LABELS_FILE, json.dumps(labels, ensure_ascii=False, indent=1))
            zf.writestr(MANIFEST_FILE, json.dumps(manifest, ensure_ascii=False, indent=1))
            if card is not None:
                zf.writestr(CARD_FILE, card)
    return buf.getvalue()


def read_manifest(bundle: bytes | Path) -> dict:
    """The manifest inside bundle bytes or a bundle file."""
    src = io.BytesIO(bundle) if isinstance(bundle, bytes) else bundle
    with zipfile.ZipFile(src) as zf:
        return json.loads(zf.read(MANIFEST_FILE))


def save_bundle(dumps_dir: Path, model_id: str, bundle: bytes) -> Path:
    """Write `dumps/<id>/{model.zip, manifest.json, MODEL_CARD.md}` atomically (rename of a finished folder)."""
    dumps_dir = Path(dumps_dir)
    dumps_dir.mkdir(parents=True, exist_ok=True)
    final = dumps_dir / model_id
    if final.exists():  # a re-delivered result: keep the first, it is complete
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}.", dir=dumps_dir))
    try:
        (tmp / BUNDLE_FILE).write_bytes(bundle)
        (tmp / MANIFEST_FILE).write_text(json.dumps(read_manifest(bundle), ensure_ascii=False, indent=1))
        with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
            if CARD_FILE in zf.namelist() and zf.getinfo(CARD_FILE).file_size <= 16 * 1024 * 1024:
                (tmp / CARD_FILE).write_bytes(zf.read(CARD_FILE))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final

