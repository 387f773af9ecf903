"""The genetic search (optimize=1) through the real service: uWSGI, broker, ZeroMQ workers,
real photos, real training. Tiny controls keep each search to seconds."""
from __future__ import annotations

import io
import json
import os
import signal
import zipfile

import pytest

from modelization.recognizer import load_bundle
from optimization.genome import decode
from test.conftest import pick_people
from test.stack import Stack, photo_files

TINY = {"population": "8", "generations": "2"}
LOGBOOK_KEYS = {"generation", "evaluations", "cache_hits", "seconds", "balanced_accuracy", "open_set", "params"}
METHODS = {"chosen network", "chosen network + gallery (the bundle)", "1-nearest-neighbour", "nearest centroid",
           "logistic regression"}


@pytest.fixture(scope="module")
def people(faces_dir):
    """6 people x 9 photos: the first 8 upload, the 9th stays out for a prediction check."""
    return pick_people(faces_dir, 6, 9)


@pytest.fixture(scope="module")
def upload(people):
    return photo_files({name: paths[:8] for name, paths in people.items()})


def manifest_of(stack: Stack, job_id: str) -> dict:
    bundle = stack.get(f"/models/{job_id}", timeout=60).content
    return json.loads(zipfile.ZipFile(io.BytesIO(bundle)).read("manifest.json"))


def build_done(stack: Stack, upload, **form) -> tuple[str, dict]:
    r = stack.build(upload, optimize="1", **form)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    return job_id, stack.wait_state(job_id, ("done",), timeout=600)


def without_seconds(logbook: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "seconds"} for line in logbook]


def test_a_tiny_search_builds_a_model_and_shows_what_it_did(stack, upload, people):
    job_id, status = build_done(stack, upload, seed="5", **TINY)
    search = status["search"]
    assert search["generation"] == 2 and search["generations"] == 2 and search["done"]
    assert search["evaluations"] >= 8 and set(search["best"]) == {"balanced_accuracy", "open_set", "smallest_params"}

    m = manifest_of(stack, job_id)
    opt = m["optimization"]
    assert opt["performed"] and opt["stop_reason"] == "generations done"
    assert [line["generation"] for line in opt["logbook"]] == [0, 1, 2]
    assert all(LOGBOOK_KEYS <= set(line) for line in opt["logbook"])
    assert all(set(line["params"]) == {"max", "mean", "min"} for line in opt["logbook"])
    assert opt["evaluations"] == opt["logbook"][-1]["evaluations"] == search["evaluations"]
    assert opt["pareto_front"] and all({"genome", "network", "balanced_accuracy", "open_set", "params"} <= set(p)
                                       for p in opt["pareto_front"])
    # the best networks were scored again on more folds, and the pick is one of them
    cv = opt["cross_validation"]
    assert cv["complete"] and 1 <= len(cv["finalists"]) <= cv["finalists_wanted"]
    assert cv["evaluations"] == len(cv["finalists"]) * cv["more_folds"] == search["fold_evaluations"]
    assert all(len(f["fold_scores"]) == cv["more_folds"] + 1 for f in cv["finalists"])
    assert opt["chosen"]["genome"] in [f["genome"] for f in cv["finalists"]]
    assert opt["chosen"]["score"] == max(f["score"] for f in cv["finalists"]
                                         if f["params"] == opt["chosen"]["params"])

    # the shipped network is the chosen genome, retrained on train + validation
    chosen = opt["chosen"]
    spec = decode(chosen["genome"])
    assert m["network"]["hidden"] == list(spec.hidden) and m["network"]["cosine"] == spec.cosine
    assert m["network"]["params"] == chosen["params"]
    assert m["training"]["epochs"] == chosen["epochs"]
    assert "train + validation" in m["training"]["trained_on"]
    assert "smallest" in opt["choice_rule"] or "fewest" in opt["choice_rule"]

    baselines = opt["baselines"]
    assert set(baselines["closed_set"]) == METHODS
    assert baselines["closed_set"]["chosen network"]["test_accuracy"] == m["metrics"]["network_test_accuracy"]
    assert (baselines["closed_set"]["chosen network + gallery (the bundle)"]["test_accuracy"]
            == m["metrics"]["test_accuracy"])
    assert set(baselines["open_set"]) == METHODS and len(baselines["held_out_people"]) == 1

    # and it is a working recognizer: a photo it never saw gets the right name offline
    rec = load_bundle(stack.get(f"/models/{job_id}", timeout=60).content)
    name, paths = next(iter(people.items()))
    faces = rec.predict(paths[8].read_bytes())
    assert faces and faces[0].candidate == name


def test_same_seed_and_photos_choose_the_same_network(stack, upload):
    first, _ = build_done(stack, upload, seed="11", **TINY)
    second, _ = build_done(stack, upload, seed="11", **TINY)
    a, b = manifest_of(stack, first)["optimization"], manifest_of(stack, second)["optimization"]
    assert a["chosen"]["genome"] == b["chosen"]["genome"]
    assert [p["genome"] for p in a["pareto_front"]] == [p["genome"] for p in b["pareto_front"]]
    assert without_seconds(a["logbook"]) == without_seconds(b["logbook"])


def test_the_time_budget_stops_the_search_with_the_best_so_far(stack, upload):
    r = stack.build(upload, optimize="1", seed="3", population="64", generations="100", time_budget="4")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    # while it runs, /is_available shows the generation, evaluations and best scores so far
    running = stack.wait_state(job_id, ("optimizing",), timeout=120,
                               pred=lambda s: (s["search"] or {}).get("evaluations", 0) > 0)
    assert running["progress"]["stage"].startswith("generation ") and running["progress"]["stage"].endswith("of 100")
    assert running["search"]["budget_s"] == 4 and running["search"]["best"]["balanced_accuracy"] > 0

    stack.wait_state(job_id, ("done",), timeout=300)
    opt = manifest_of(stack, job_id)["optimization"]
    # the budget stopped the evolution, not the end of its generations, and not before 3/4 of the budget
    # (the search's own clock: true on any machine). Where exactly each stop falls (3/4 of the budget
    # for the evolution, the budget for the finalists' folds) is proved with a clock the test drives,
    # test_evolution.py::test_the_budget_ends_the_evolution_early_then_the_folds: here, how soon the
    # broker's loop notices would measure this machine's load.
    assert opt["stop_reason"] == "time budget"
    assert opt["generations_run"] < 100
    assert opt["seconds"] >= 3
    assert opt["chosen"] is not None


@pytest.mark.parametrize("field, value", [
    ("population", "-1"), ("population", "0"), ("population", "1000000"), ("population", "many"),
    ("generations", "1000000"), ("generations", "0"), ("generations", "2.5"),
    ("time_budget", "0"), ("time_budget", "-5"), ("time_budget", "nan"), ("time_budget", "1e12"),
])
def test_an_invalid_control_gets_a_clear_400(stack, upload, field, value):
    r = stack.build(upload[:6], optimize="1", **{field: value})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"]["code"] == "BAD_PARAMETER" and field in body["error"]["message"]


def test_search_controls_without_optimize_are_refused(stack, upload):
    r = stack.build(upload[:6], population="8")
    assert r.status_code == 400 and "optimize=1" in r.json()["error"]["message"]


def test_a_search_resumes_from_its_checkpoint_after_a_restart(stacks, upload):
    stack = stacks.start("resume", warm_up=False)
    data = stack.data_dir
    # 12 generations: the stop comes at generation 2, far from the end (40 only made the resumed half longer)
    r = stack.build(upload, optimize="1", seed="9", population="16", generations="12")
    job_id = r.json()["id"]
    stack.wait_state(job_id, ("optimizing",), timeout=300,
                     pred=lambda s: (s["search"] or {}).get("generation", 0) >= 2)
    stack.stop()
    checkpoint = json.loads((data / "var" / "uploads" / job_id / "search.json").read_text())
    assert not checkpoint["done"] and checkpoint["generation"] >= 2

    stack = stacks.start(data_dir=data, warm_up=False)
    stack.wait_state(job_id, ("done",), timeout=600)
    opt = manifest_of(stack, job_id)["optimization"]
    stack.stop()
    # the generations from before the stop are kept, not run again
    assert opt["logbook"][:len(checkpoint["logbook"])] == checkpoint["logbook"]
    assert opt["evaluations"] >= checkpoint["evaluations"]
    assert [line["generation"] for line in opt["logbook"]] == list(range(13))


def test_a_worker_killed_mid_search_does_not_stop_it(stack, upload):
    r = stack.build(upload, optimize="1", seed="21", population="16", generations="12")
    job_id = r.json()["id"]
    st = stack.wait_state(job_id, ("optimizing",), timeout=300,
                          pred=lambda s: s["worker"] is not None and (s["search"] or {}).get("generation", 0) >= 1)
    os.kill(int(st["worker"].split(":")[1]), signal.SIGKILL)
    stack.wait_state(job_id, ("done",), timeout=600)
    opt = manifest_of(stack, job_id)["optimization"]
    assert opt["stop_reason"] == "generations done" and len(opt["logbook"]) == 13
    assert stack.wait_alive(2, timeout=60)["workers"] == 2


def test_an_optimized_build_without_faces_fails_clearly(stack):
    from test.test_api_errors import _blank_jpeg
    files = [(f"{p}/{i}.jpg", _blank_jpeg(500 + 10 * k + i)) for k, p in enumerate(("ann", "ben", "cy"))
             for i in range(3)]
    r = stack.build(files, optimize="1", **TINY)
    assert r.status_code == 202, r.text
    st = stack.wait_state(r.json()["id"], ("failed",), timeout=120)
    assert st["error"]["code"] == "NO_FACE_FOUND"  # from the first candidate's task, not a crash


def test_an_optimized_build_with_too_few_people_left_fails_clearly(stack, faces_dir):
    from test.test_api_errors import _blank_jpeg
    people = pick_people(faces_dir, 1, 3)
    files = photo_files(people) + [(f"nobody/{i}.jpg", _blank_jpeg(600 + i)) for i in range(3)]
    r = stack.build(files, optimize="1", **TINY)
    st = stack.wait_state(r.json()["id"], ("failed",), timeout=120)
    assert st["error"]["code"] == "TOO_FEW_PEOPLE"


def test_a_search_on_two_photos_per_person_falls_back_to_the_fixed_network_and_says_why(stack, upload):
    """Two photos each: no validation photo, so no network can be ranked; the build still succeeds."""
    few = [f for k, f in enumerate(upload) if k % 8 < 2]  # `upload` holds 8 photos per person, in order
    assert len(few) == 12 and len({name.split("/")[0] for name, _ in few}) == 6
    job_id, _ = build_done(stack, few, seed="3", **TINY)
    m = manifest_of(stack, job_id)
    opt = m["optimization"]
    assert opt["requested"] and not opt["performed"] and opt["chosen"] is None
    assert "validation photos show 0 known person" in opt["fallback"] and "fixed default network" in opt["note"]
    assert opt["stop_reason"].startswith("fell back to the fixed network")
    assert m["network"]["hidden"] == [128] and m["refit"]["gallery_photos"] == 12


def test_two_people_search_without_an_open_set_objective(stack, upload):
    """Nobody can be held out as a stranger with 2 people: the search ranks on accuracy alone."""
    two = [f for f in upload if f[0].split("/")[0] in sorted({g[0].split("/")[0] for g in upload})[:2]]
    job_id, _ = build_done(stack, two, seed="2", **TINY)
    opt = manifest_of(stack, job_id)["optimization"]
    assert opt["chosen"]["open_set"] is None and opt["baselines"]["open_set"] is None
    assert opt["baselines"]["held_out_people"] == []
