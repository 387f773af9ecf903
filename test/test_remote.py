"""The command-line client's parts (#20): the folder it zips, the body it streams, and what it prints
while it follows a build (stage by stage, generation by generation for a search). Through the real
service: test/test_console.py."""
from __future__ import annotations

import io
import zipfile

import pytest

from app.cli.remote import Bar, ClientError, Multipart, follow, zip_people


def test_the_folder_is_zipped_with_its_people_and_only_photos(tmp_path):
    for person in ("alice", "bob"):
        (tmp_path / "team" / person).mkdir(parents=True)
        (tmp_path / "team" / person / "1.jpg").write_bytes(b"jpeg")
    (tmp_path / "team" / "bob" / "2.PNG").write_bytes(b"png")
    (tmp_path / "team" / "notes.txt").write_text("x")
    (tmp_path / "team" / ".hidden").mkdir()
    (tmp_path / "team" / ".hidden" / "3.jpg").write_bytes(b"jpeg")
    buf = io.BytesIO()
    found = zip_people(tmp_path / "team", buf)
    assert found == {"photos": 3, "people": 2, "ignored": ["notes.txt"]}
    assert sorted(zipfile.ZipFile(buf).namelist()) == ["alice/1.jpg", "bob/1.jpg", "bob/2.PNG"]
    with pytest.raises(ClientError, match="not a folder"):
        zip_people(tmp_path / "nothing", io.BytesIO())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClientError, match="no photos"):
        zip_people(tmp_path / "empty", io.BytesIO())


def test_the_multipart_body_is_what_a_form_would_send_and_reports_its_progress():
    from werkzeug.formparser import parse_form_data
    from werkzeug.test import EnvironBuilder
    data = bytes(range(256)) * 4000
    seen = []
    body = Multipart({"name": "office", "optimize": "1"}, "archive", "people.zip", io.BytesIO(data), len(data),
                     lambda sent, total: seen.append((sent, total)))
    raw = b"".join(iter(lambda: body.read(65536), b""))
    assert len(raw) == len(body) and seen[-1] == (len(body), len(body))
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    env = EnvironBuilder(method="POST", input_stream=io.BytesIO(raw), content_type=body.content_type,
                         content_length=len(raw)).get_environ()
    _, form, files = parse_form_data(env)
    assert form.to_dict() == {"name": "office", "optimize": "1"}
    assert files["archive"].filename == "people.zip" and files["archive"].read() == data


class Scripted:
    """A service whose /is_available answers a script, one status per poll."""

    def __init__(self, states):
        self.states = iter(states)

    def call(self, method, path):
        status = next(self.states)

        class Answer:
            @staticmethod
            def json():
                return status
        return Answer()


def job(state, stage, done=0, total=0, search=None, error=None):
    return {"state": state, "progress": {"stage": stage, "done": done, "total": total}, "search": search,
            "error": error}


def search(generation, phase="evolving", evaluations=8, folds=0):
    return {"generation": generation, "generations": 3, "evaluations": evaluations, "phase": phase,
            "finalists": 16, "fold_evaluations": folds, "fold_evaluations_planned": 48, "cache_hits": 0,
            "seconds": 4.0 * generation, "budget_s": 300.0,
            "best": {"balanced_accuracy": 0.9, "open_set": 0.8, "smallest_params": 512}, "done": False}


def test_a_build_is_followed_stage_by_stage_and_a_search_generation_by_generation():
    out = io.StringIO()
    script = [job("queued", "queued"), job("extracting", "extracting", 16, 48), job("extracting", "extracting", 48, 48),
              job("optimizing", "generation 1 of 3", search=search(1)),
              job("optimizing", "generation 2 of 3", search=search(2, evaluations=15)),
              job("optimizing", "generation 3 of 3", search=search(3, evaluations=21)),
              job("optimizing", "cross-validating", search=search(3, "confirming", 21, 24)),
              job("training", "training", 12, 200), job("done", "done")]
    final = follow(Scripted(script), "id", Bar(out), interval=0)
    assert final["state"] == "done"
    text = out.getvalue()
    for line in ("extracting", "16/48", "generation 1 of 3", "generation 2 of 3", "generation 3 of 3",
                 "15 networks", "cross-validating finalists", "training", "built"):
        assert line in text, line
    assert text.index("generation 1 of 3") < text.index("generation 2 of 3") < text.index("cross-validating")


def test_a_failed_build_stops_with_the_service_s_reasons():
    failed = job("failed", "failed", error={"code": "NO_FACE_FOUND", "message": "no usable face",
                                            "details": {"files": [{"file": "a/1.jpg", "reason": "no_face"}]}})
    with pytest.raises(ClientError) as exc:
        follow(Scripted([job("extracting", "extracting", 1, 2), failed]), "id", Bar(io.StringIO()), interval=0)
    assert "NO_FACE_FOUND" in str(exc.value) and "file=a/1.jpg, reason=no_face" in str(exc.value)
