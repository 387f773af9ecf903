"""The user's view through the real service (#20): the web console in a real browser (headless Debian
Chromium), the command-line client, /metrics summed over every process, and the Grafana dashboard's
queries against what /metrics really exposes. Screenshots: var/test-artifacts/<test>/."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest
from prometheus_client.parser import text_string_to_metric_families

from test.browser import chromium
from test.conftest import pick_people, side_by_side
from test.stack import ROOT, photo_files
from test.waits import wait_until

BUILD = 4  # photos per person uploaded; the next one is held out to try the model with
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def people(faces_dir):
    return pick_people(faces_dir, 3, BUILD + 1)


def faceless_jpeg() -> bytes:
    """A real JPEG without a face in it (a grey gradient)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def people_zip(people) -> bytes:
    """A zip as a person makes one: a top folder, one folder per person, a photo without a face in the
    first person's, and a file that is no photo."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for person, paths in people.items():
            for path in paths[:BUILD]:
                zf.write(path, f"team/{person}/{path.name}")
        zf.writestr(f"team/{next(iter(people))}/landscape.jpg", faceless_jpeg())
        zf.writestr("team/README.txt", "who is who")
    return buf.getvalue()


@pytest.fixture(scope="module")
def searched(stack, people) -> str:
    """A model built with a small genetic search."""
    r = stack.build(photo_files({p: paths[:BUILD] for p, paths in people.items()}), name="searched", optimize="1",
                    population="8", generations="3", time_budget="120", seed="5")
    assert r.status_code == 202, r.text
    stack.wait_state(r.json()["id"], ("done",))
    return r.json()["id"]


def api(stack, path: str) -> dict:
    r = stack.get(path, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


# --- the console in a browser ----------------------------------------------------------------------
@pytest.mark.browser
def test_a_zip_dropped_on_the_console_builds_a_model_that_names_the_faces_of_a_photo(stack, people, people_zip,
                                                                                     faces_dir, request):
    held_out = people[next(iter(people))][BUILD]
    first = next(iter(people))
    stranger = sorted((faces_dir / "strangers").glob("*.jpg"))[0]
    photo = side_by_side(small=stranger, large=held_out)  # the known face large on the left
    with chromium(request.node.name, stack.admin_key) as b:
        page = b.page
        response = page.goto(stack.url + "/")
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        page.wait_for_selector("h1:has-text('Models')")
        b.shot("models")
        page.click("header >> text=New model")
        page.wait_for_selector("#dropzone")
        b.drop_file("#dropzone", "team.zip", people_zip, "application/zip")
        page.wait_for_selector(".selection >> text=team.zip")
        page.fill("#model-name", "dropped zip")
        b.shot("new-model")
        page.click("#build-button")
        page.wait_for_url(re.compile(r".*#/model/" + UUID.pattern + "$"))
        job_id = UUID.search(page.url).group(0)
        b.shot("building")
        page.wait_for_selector("#results .cards", timeout=240_000)
        b.shot("built")

        report = api(stack, f"/models/{job_id}/report")
        assert report["name"] == "dropped zip" and report["photos"] == 3 * BUILD + 1
        names = page.locator(".people-table tbody tr td:first-child").all_inner_texts()
        assert names == sorted(people) == [p["label"] for p in report["manifest"]["people"]]
        cells = page.locator(".people-table tbody tr").first.locator("td").all_inner_texts()
        assert cells[1:4] == [str(BUILD + 1), str(BUILD), "1 no face"]  # photos, used, skipped and why
        page.locator(".people-table a.person").first.click()
        photos = page.locator("details.person-photos[open] table.photos-table tbody tr")
        photos.first.wait_for()
        assert photos.count() == BUILD + 1
        assert "skipped: no face" in photos.filter(has_text="landscape.jpg").inner_text()
        b.shot("photos")
        # the table is a page of GET /models/<id>/people (issue #28): its range, and the find box
        assert page.locator("#people .page-range").inner_text().strip() == "1–3 of 3"
        assert page.locator("#people button.next").is_disabled()
        last = sorted(people)[-1]
        page.fill("#people-filter", last.lower())  # any case
        page.wait_for_selector("#people .page-range >> text=1–1 of 1")
        assert page.locator(".people-table tbody tr td:first-child").all_inner_texts() == [last]
        assert page.locator(".page-head h1").inner_text() == "dropped zip"
        assert page.locator("#download-button").is_enabled()

        page.set_input_files("#try-input", files=[{"name": "pair.jpg", "mimeType": "image/jpeg", "buffer": photo}])
        page.wait_for_selector("#faces-table")
        b.shot("tried")
        boxes = page.locator(".face-box")
        # the two faces pasted, largest first; the stranger's LFW crop also shows part of a second person at
        # its edge, a smaller face that BlazeFace finds (HOG did not): unknown too, after them
        assert boxes.count() >= 2
        labels = [boxes.nth(i).get_attribute("data-label") for i in range(boxes.count())]
        assert labels[:2] == [first, "unknown"] and set(labels[2:]) <= {"unknown"}, labels
        assert "known" in boxes.nth(0).get_attribute("class").split()
        assert "unknown" in boxes.nth(1).get_attribute("class").split()
        assert boxes.nth(0).inner_text().startswith(first)
        # drawn where the service found them: the known face on the left of the composite
        stage = page.locator("#try-stage").bounding_box()
        known, other = boxes.nth(0).bounding_box(), boxes.nth(1).bounding_box()
        assert known["x"] + known["width"] / 2 < stage["x"] + stage["width"] * 320 / 560 < other["x"]
        rows = page.locator("#faces-table tbody tr").all_inner_texts()
        assert first in rows[0] and "unknown" in rows[1]
        # the same answer as the API's for the same photo
        direct = stack.post(f"/models/{job_id}/predict", files={"image": ("p.jpg", photo)},
                               timeout=60).json()
        assert [f["label"] for f in direct["faces"]] == labels
        assert b.csp_violations() == [] and b.errors == []


@pytest.mark.browser
def test_a_search_is_drawn_candidate_by_candidate_beside_its_logbook_front_and_baselines(stack, searched,
                                                                                         request):
    view = api(stack, f"/models/{searched}/search")
    assert view["requested"] and view["source"] == "manifest" and view["candidates"]
    with chromium(request.node.name, stack.admin_key) as b:
        page = b.page
        page.goto(f"{stack.url}/#/model/{searched}/search")
        page.wait_for_selector("#candidates-chart")
        page.wait_for_selector("#results .cards")
        b.shot("search")
        dots = page.locator("#candidates-chart circle.candidate")
        assert dots.count() == len(view["candidates"])
        front = {tuple(p["genome"]) for p in view["pareto_front"]}
        assert page.locator("#candidates-chart circle.candidate.pareto").count() == \
            sum(1 for c in view["candidates"] if tuple(c["genome"]) in front) >= 1
        assert page.locator("#candidates-chart circle.candidate.chosen").count() == \
            sum(1 for c in view["candidates"] if c["genome"] == view["chosen"]["genome"]) == 1
        generations = sorted({int(d) for d in page.locator("#candidates-chart circle.candidate")
                              .evaluate_all("els => els.map(e => e.dataset.generation)")})
        assert generations == sorted({c["generation"] for c in view["candidates"]})
        assert page.locator("table.logbook tbody tr").count() == len(view["logbook"]) == 4  # generations 0-3
        assert page.locator("table.baselines tbody tr").count() == len(view["baselines"]["closed_set"])
        assert page.locator("table.finalists tbody tr").count() == len(view["finalists"])
        assert page.locator("#operating-chart svg").count() == 1
        assert page.locator("table.operating tbody tr").count() == \
            len(api(stack, f"/models/{searched}/report")["open_set"]["operating_points"])
        assert b.csp_violations() == [] and b.errors == []


@pytest.mark.browser
def test_the_list_shows_models_live_and_deletes_one_only_once_confirmed(stack, people, request):
    r = stack.build(photo_files({p: paths[:2] for p, paths in people.items()}), name="to delete")
    job_id = r.json()["id"]
    with chromium(request.node.name, stack.admin_key) as b:
        page = b.page
        page.goto(stack.url + "/")
        row = page.locator(f"tr:has(a[data-id='{job_id}'])")
        row.wait_for()
        page.wait_for_selector(f"tr:has(a[data-id='{job_id}']) .badge.state-done", timeout=120_000)
        assert "to delete" in row.inner_text() and "3" in row.locator("td").nth(3).inner_text()
        b.shot("listed")
        row.locator("button:has-text('Delete')").click()
        page.wait_for_selector("#confirm-dialog[open]")
        b.shot("confirm")
        page.click("#confirm-dialog [data-act=cancel]")
        assert stack.get(f"/is_available/{job_id}", timeout=10).status_code == 200
        row.locator("button:has-text('Delete')").click()
        page.click("#confirm-dialog [data-act=ok]")
        page.wait_for_selector(f"a[data-id='{job_id}']", state="detached")
        b.shot("deleted")
        assert stack.get(f"/is_available/{job_id}", timeout=10).status_code == 404
        assert b.errors == []


@pytest.mark.browser
def test_the_key_is_asked_once_kept_for_the_session_and_sent_with_every_call(stack, request):
    """The service answers 401 without a key: the console asks once, keeps the key in sessionStorage and
    sends it as X-API-Key with every call; a wrong key is asked again; another session starts without."""
    with chromium(request.node.name) as b:
        page = b.page
        sent: list[str | None] = []
        api = re.compile(r"/models(\?|/|$)")  # the API's answers, not /static/js/models.js
        page.on("request", lambda r: sent.append(r.headers.get("x-api-key")) if api.search(r.url) else None)
        page.goto(stack.url + "/")
        page.wait_for_selector("#key-dialog[open]")
        assert "needs an API key" in page.locator("#key-dialog .reason").inner_text()
        b.shot("asked")
        page.fill("#key-dialog input[name=key]", "fr_0123456789ab_" + "k" * 43)  # not a key of this service
        page.click("#key-dialog button[type=submit]")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-dialog input[name=key]", stack.admin_key)
        page.click("#key-dialog button[type=submit]")
        page.wait_for_selector("h1:has-text('Models')")
        page.wait_for_selector("table.models-table, p.empty")
        assert page.evaluate("sessionStorage.getItem('fr.apiKey')") == stack.admin_key
        assert sent[0] is None and sent[-1] == stack.admin_key
        n = len(sent)
        page.reload()  # same tab, same session: no question
        page.wait_for_selector("table.models-table, p.empty")
        assert not page.locator("#key-dialog[open]").count()
        assert len(sent) > n and all(s == stack.admin_key for s in sent[n:])
        b.shot("with-key")
        other = b.context.browser.new_context()  # another session starts without it
        try:
            fresh = other.new_page()
            fresh.goto(stack.url + "/")
            fresh.wait_for_selector("#key-dialog[open]")
        finally:
            other.close()
        assert b.errors == [] or all("401" in e for e in b.errors), b.errors


@pytest.mark.browser
def test_bad_uploads_are_explained_in_place(stack, people, tmp_path, request):
    folder = tmp_path / "upload"
    (person, paths), (other, others) = list(people.items())[:2]
    (folder / person).mkdir(parents=True)
    (folder / other).mkdir()
    (folder / person / "1.jpg").write_bytes(paths[0].read_bytes())
    (folder / person / "notes.jpg").write_bytes(b"this is text, not a photo")
    (folder / other / "1.jpg").write_bytes(others[0].read_bytes())
    lonely = tmp_path / "lonely" / person
    lonely.mkdir(parents=True)
    (lonely / "1.jpg").write_bytes(paths[0].read_bytes())
    with chromium(request.node.name, stack.admin_key) as b:
        page = b.page
        page.goto(stack.url + "/#/new")
        page.set_input_files("#folder-input", str(folder))
        page.wait_for_selector("#selection-count:has-text('3 photos of 2 people')")
        page.click("#build-button")
        page.wait_for_selector(".result .error")
        b.shot("not-an-image")
        assert page.locator(".result .error .code").inner_text() == "NOT_AN_IMAGE"
        listed = page.locator(".result .error table.details-files tbody tr").all_inner_texts()
        assert len(listed) == 1 and f"{person}/notes.jpg" in listed[0]
        page.set_input_files("#folder-input", str(lonely.parent))
        page.wait_for_selector(".selection .warn:has-text('at least 2 people')")
        page.click("#build-button")
        page.wait_for_selector(".result .error .code:has-text('TOO_FEW_PEOPLE')")
        b.shot("too-few-people")


@pytest.mark.browser
def test_a_photo_from_the_camera_goes_to_the_model(stack, searched, request):
    """Chromium's fake camera (a test pattern, no face): the shot reaches predict and the answer is shown."""
    with chromium(request.node.name, stack.admin_key) as b:
        page = b.page
        page.goto(f"{stack.url}/#/model/{searched}/try")
        page.wait_for_selector("#camera-button")
        page.click("#camera-button")
        video = page.locator("video.camera")
        # polled from here: wait_for_function evaluates strings, which the CSP forbids
        wait_until(lambda: video.evaluate("v => v.videoWidth") > 0, 60, what="the camera never showed a picture")
        page.click("#shoot-button")
        page.wait_for_selector("#try-summary")
        b.shot("camera")
        assert "no face" in page.locator("#try-summary").inner_text().lower()
        assert any(r.url.endswith(f"/models/{searched}/predict") and r.method == "POST" for r in b.requests)
        page.click("#camera-button")  # closes it
        assert b.errors == []


@pytest.mark.browser
def test_the_api_reference_shows_every_operation(stack, request):
    doc = api(stack, "/openapi.json")
    operations = {f"{method}-{path}" for path, ops in doc["paths"].items() for method in ops}
    with chromium(request.node.name, stack.admin_key) as b:
        page = b.page
        page.goto(stack.url + "/docs")
        page.wait_for_selector("html[data-ready='1']")
        b.shot("docs")
        shown = set(page.locator("div.op[id]").evaluate_all("els => els.map(e => e.id)"))
        assert operations <= shown
        assert page.locator("div.op[id^='schema-']").count() == len(doc["components"]["schemas"])
        assert b.csp_violations() == [] and b.errors == []


# --- the command line ------------------------------------------------------------------------------
def run_build(*args: str, key: str | None = None) -> subprocess.CompletedProcess:
    """`run.py build` as a user runs it, with the API key in FR_API_KEY (none when `key` is None)."""
    env = {k: v for k, v in os.environ.items() if k != "FR_API_KEY"}
    if key:
        env["FR_API_KEY"] = key
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "build", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_the_command_line_client_builds_follows_and_downloads(stack, people, tmp_path):
    folder = tmp_path / "office"
    for person, paths in people.items():
        (folder / person).mkdir(parents=True)
        for p in paths[:BUILD]:
            (folder / person / p.name).write_bytes(p.read_bytes())
    (folder / ".DS_Store").write_bytes(b"\0")
    out = tmp_path / "model.zip"
    r = run_build(str(folder), "--url", stack.url, "--optimize", "--population", "8", "--generations", "2",
                  "-o", str(out), key=stack.admin_key)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert f"{3 * BUILD} photos of 3 people" in r.stderr and "uploading" in r.stderr and "100.0%" in r.stderr
    job_id = UUID.search(r.stderr).group(0)
    assert "built" in r.stderr and "held-out balanced accuracy" in r.stderr
    with zipfile.ZipFile(out) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["model_id"] == job_id and manifest["name"] == "office"
    assert manifest["optimization"]["performed"] and manifest["labels"] == sorted(people)
    assert out.read_bytes() == stack.get(f"/models/{job_id}", timeout=30).content


def test_the_command_line_client_says_why_it_stops(stack, people, tmp_path):
    person, paths = next(iter(people.items()))
    lonely = tmp_path / "lonely" / person
    lonely.mkdir(parents=True)
    (lonely / "1.jpg").write_bytes(paths[0].read_bytes())
    r = run_build(str(lonely.parent), "--url", stack.url)  # no key
    assert r.returncode == 1 and "UNAUTHORIZED" in r.stderr and "FR_API_KEY" in r.stderr, r.stderr
    r = run_build(str(lonely.parent), "--url", stack.url, key=stack.admin_key)
    assert r.returncode == 1 and "TOO_FEW_PEOPLE" in r.stderr, r.stderr
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "1.jpg").write_bytes(paths[0].read_bytes())
    r = run_build(str(loose), "--url", stack.url, key=stack.admin_key)
    assert r.returncode == 1 and "not in a person's folder" in r.stderr
    r = run_build(str(tmp_path / "missing"), "--url", stack.url, key=stack.admin_key)
    assert r.returncode == 1 and "is not a folder" in r.stderr
    bad = tmp_path / "bad"
    (bad / "a").mkdir(parents=True)
    (bad / "b").mkdir()
    (bad / "a" / "1.jpg").write_bytes(b"not a photo")
    (bad / "b" / "1.jpg").write_bytes(paths[0].read_bytes())
    r = run_build(str(bad), "--url", stack.url, key=stack.admin_key)
    assert r.returncode == 1 and "NOT_AN_IMAGE" in r.stderr and "file=a/1.jpg" in r.stderr, r.stderr
    r = run_build(str(bad), "--url", "http://127.0.0.1:9")
    assert r.returncode == 1 and "cannot reach" in r.stderr
    r = run_build(str(bad), "--url", stack.url, "--population", "8", key=stack.admin_key)
    assert r.returncode == 2 and "only apply with --optimize" in r.stderr


# --- /metrics and the dashboard ---------------------------------------------------------------------
def scrape(stack) -> dict[tuple[str, tuple], float]:
    r = stack.get("/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_add_up_every_process(stack, searched, faces_dir):
    before = scrape(stack)
    for _ in range(12):  # served by both web processes: the scrape must add their files up
        assert stack.get(f"/models/{searched}/summary", timeout=10).status_code == 200
    stack.get("/no/such/route", timeout=10)
    body = stack.post(f"/models/{searched}/predict", timeout=60,
                         files={"image": ("two.jpg", (faces_dir / "wild" / "two_people.jpg").read_bytes())}).json()
    after = scrape(stack)
    route = "/models/<job_id>/summary"
    assert value(after, "fr_http_requests_total", route=route, method="GET", status="200") - \
        value(before, "fr_http_requests_total", route=route, method="GET", status="200") == 12
    assert value(after, "fr_http_request_duration_seconds_count", route=route, method="GET") - \
        value(before, "fr_http_request_duration_seconds_count", route=route, method="GET") == 12
    assert value(after, "fr_http_requests_total", route="unmatched", method="GET", status="404") >= 1
    faces = sum(value(after, "fr_faces_predicted_total", known=k) - value(before, "fr_faces_predicted_total", known=k)
                for k in ("true", "false"))
    assert faces == body["count"] == 2
    # the broker's own files: every kind of task the search build ran, and the feature cache
    for kind in ("extract", "evaluate", "train"):
        assert value(after, "fr_task_duration_seconds_count", kind=kind, outcome="done") >= 1, kind
    assert value(after, "fr_feature_cache_total", result="miss") + value(after, "fr_feature_cache_total",
                                                                         result="hit") >= 3 * BUILD
    assert value(after, "fr_model_cache_total", result="load") >= 1
    # read at scrape time
    assert value(after, "fr_workers_connected") == 2 and value(after, "fr_broker_up") == 1
    assert value(after, "fr_builds", state="done") >= 1 and value(after, "fr_store_up") == 1
    assert value(after, "fr_queue_jobs") >= 0 and value(after, "fr_disk_free_bytes") > 0


def test_the_grafana_dashboard_queries_what_metrics_exposes(stack, searched):
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 8
    exposed = {name for name, _ in scrape(stack)}
    used = {m for e in exprs for m in re.findall(r"\b(fr_[a-z_]+)", e)}
    assert used and used <= exposed, f"queried but not exposed: {sorted(used - exposed)}"
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in exposed if n.startswith("fr_")}
    queried = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    assert families - queried == set(), f"exposed but on no panel: {sorted(families - queried)}"
