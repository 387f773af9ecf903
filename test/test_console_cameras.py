"""The console's camera pages (issue #27) in a real browser (headless Debian Chromium): a camera added from
the list's form, reading an MJPEG stream served here (real faces from ../shared/faces on a known timeline)
with a model built from other photos of the same people; its page shows it live, its events as they come
(the API's Server-Sent Events, read with fetch), the latest event's frame, and the visit as a bar on the
person's timeline; then it is deleted from the list after a confirmation. Screenshots:
var/test-artifacts/<test>/."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from test.browser import chromium
from test.camera_feeds import MjpegServer, Timeline
from test.conftest import pick_people
from test.stack import photo_files

N_UPLOAD = 6
STACK = {"workers": 1, "env": {"FR_CAMERA_ALLOW": "127.0.0.1", "FR_CAMERA_TIMEOUT_S": "3",
                               "FR_CAMERA_RETRY_MAX_S": "2"}}


@pytest.fixture(scope="module")
def people(faces_dir):
    return pick_people(faces_dir, 3, N_UPLOAD + 1, subset="lfw62")


@pytest.fixture(scope="module")
def model_id(stack, people):
    r = stack.build(photo_files({p: paths[:N_UPLOAD] for p, paths in people.items()}), name="hall")
    assert r.status_code == 202, r.text
    stack.wait_state(r.json()["id"], ("done",))
    return r.json()["id"]


@pytest.fixture(scope="module")
def feed(people):
    """The first person, on a photo the model was not built with, from 1 s to 4 s of every 8 s (a track ends
    2 s after its person leaves: each visit has its start and its end)."""
    first = sorted(people)[0]
    server = MjpegServer(Timeline([(1.0, 4.0, people[first][N_UPLOAD])], 8.0)).start()
    yield first, server
    server.stop()


@pytest.mark.browser
def test_a_camera_added_in_the_console_shows_live_its_events_frame_and_timeline(stack, model_id, feed, request):
    person, server = feed
    with chromium(request.node.name, stack.admin_key) as b:
        page = b.page
        page.goto(f"{stack.url}/#/cameras")
        page.wait_for_selector("#cameras-list .empty")
        page.wait_for_selector(f"#camera-model option[value='{model_id}']", state="attached")
        page.fill("#camera-name", "hall door")
        page.fill("#camera-url", server.url("/stream"))
        page.select_option("#camera-model", model_id)
        page.click("#camera-form button[type=submit]")
        page.wait_for_url(re.compile(r".*#/camera/[0-9a-f-]{36}$"))
        camera_id = page.url.rsplit("/", 1)[1]
        page.wait_for_selector("#camera-state[data-state=live]", timeout=90_000)
        assert page.locator("h1").inner_text() == "hall door"
        page.wait_for_selector("#camera-live[data-live]")
        # the events come through the stream: the page was opened before the first one
        page.wait_for_selector(f"#camera-events-table tr[data-label='{person}']", timeout=90_000)
        page.wait_for_function("(() => { const i = document.getElementById('camera-frame');"
                               " return i.src.startsWith('blob:') && i.naturalWidth === 640; })()", timeout=30_000)
        # the visit ends (its person left the frame): a closed bar on the person's row
        page.wait_for_selector(f"#camera-timeline rect.track-bar[data-label='{person}']:not(.open)", timeout=90_000)
        b.shot("camera")
        shown = page.eval_on_selector_all("#camera-events-table tbody tr",
                                          "rows => rows.map(r => [Number(r.dataset.event), r.dataset.label])")
        stored = stack.get(f"/cameras/{camera_id}/events", timeout=30).json()["events"]  # after: holds all shown
        by_id = {e["id"]: e["label"] for e in stored}
        assert shown and all(by_id[i] == label for i, label in shown), (shown, stored)
        assert {e["label"] for e in stored if e["type"] == "track.start"} <= {person, "unknown"}, stored
        # the frame shown is the latest event's snapshot, with the person's box drawn by the service (green: a
        # known face); a track's end shows its best frame, not the empty frame it ended on
        framed = int(page.get_attribute("#camera-frame", "data-event"))
        snap = stack.get(f"/cameras/{camera_id}/events/{framed}/snapshot", timeout=30)
        image = cv2.imdecode(np.frombuffer(snap.content, np.uint8), cv2.IMREAD_COLOR)
        b_, g, r_ = (image[:, :, i].astype(int) for i in range(3))
        assert ((g > 170) & (b_ < 110) & (r_ < 110)).sum() > 200, "no box drawn on the frame shown"
        # the list: live, then deleted after the confirmation
        page.click("a.button[href='#/cameras']")
        row = page.locator(f"#cameras-table tr:has(a[data-id='{camera_id}'])")
        row.wait_for()
        assert "live" in row.locator("td").nth(1).inner_text()
        row.locator(".delete-camera").click()
        page.click("#confirm-dialog [data-act=ok]")
        page.wait_for_selector("#cameras-list .empty")
        assert stack.get(f"/cameras/{camera_id}").status_code == 404
        assert b.csp_violations() == [] and b.errors == []
