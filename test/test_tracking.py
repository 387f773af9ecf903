"""The face tracker (features/tracking.py): faces of sampled frames -> tracks, events and names.

People are made-up identities whose embeddings sit about as far apart as dlib's do for different
people (unit-length distance ~0.9), with per-frame noise as a video's frames have; hypothesis draws the
seeds, noise, speeds and sampling rates.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.tracking import UNKNOWN, FaceSeen, Tracker, iou, name_track

SIZE = 80


def people(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n unit identities ~0.9 apart: a shared direction (faces resemble each other) plus their own."""
    common = rng.normal(size=128)
    common /= np.linalg.norm(common)
    out = []
    for _ in range(n):
        own = rng.normal(size=128)
        own -= own.dot(common) * common
        own /= np.linalg.norm(own)
        out.append(0.77 * common + 0.64 * own)
    return out


def seen(rng: np.random.Generator, who: np.ndarray, noise: float, t: float, x: float, y: float = 100,
         frame: int = 0, quality: float = 1.0, reason: str | None = None, label: str = UNKNOWN) -> FaceSeen:
    """A face of `who` at (x, y) with per-frame noise of about `noise` (unit-length distance) and
    dlib's embedding length (~0.95, varying)."""
    e = who + rng.normal(0, noise / np.sqrt(128), 128)
    e = e / np.linalg.norm(e) * rng.uniform(0.85, 1.05)
    box = (int(x), int(y), int(x) + SIZE, int(y) + SIZE)
    return FaceSeen(t=t, box=box, embedding=e.astype(np.float32), quality=quality, reason=reason,
                    label=label, confidence=0.9 if label != UNKNOWN else 0.0, frame=frame)


def judge_for(ids: dict[str, np.ndarray], limit: float = 0.5):
    """A recognizer's stand-in: the nearest identity within `limit`, else nobody."""
    def judge(e: np.ndarray) -> tuple[str | None, float]:
        u = e / np.linalg.norm(e)
        name, d = min(((k, float(np.linalg.norm(u - v / np.linalg.norm(v)))) for k, v in ids.items()),
                      key=lambda kv: kv[1])
        return (name if d <= limit else None), max(0.0, 1 - d)
    return judge


def run(tracker: Tracker, frames: list[tuple[float, list[FaceSeen]]]) -> list:
    events = []
    for t, faces in frames:
        events += tracker.update(t, faces)
    return events + tracker.close()


def track_of(tracker: Tracker) -> dict[int, int]:
    """id(face) -> track id, for every face kept by a track."""
    return {id(f): tr.id for tr in tracker.tracks() for f in tr.faces}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), noise=st.floats(0.0, 0.25), fps=st.sampled_from([2, 5, 10]),
       seconds=st.floats(2.0, 6.0), dy=st.integers(0, 30))
def test_two_people_crossing_keep_their_tracks(seed, noise, fps, seconds, dy):
    """A walks left to right, B right to left on nearly the same line: their boxes overlap at the
    crossing, yet each keeps one track holding all and only their faces."""
    rng = np.random.default_rng(seed)
    a, b = people(2, rng)
    n = int(seconds * fps)
    frames, owner = [], {}
    for k in range(n):
        t = k / fps
        x = 600 * k / max(n - 1, 1)
        fa, fb = seen(rng, a, noise, t, x, 100, k), seen(rng, b, noise, t, 600 - x, 100 + dy, k)
        owner[id(fa)], owner[id(fb)] = "a", "b"
        frames.append((t, [fb, fa] if k % 2 else [fa, fb]))
    tracker = Tracker(max_gap_s=1.0)
    events = run(tracker, frames)
    tracks = tracker.tracks()
    assert len(tracks) == 2
    assert [e.kind for e in events].count("start") == 2 and [e.kind for e in events].count("end") == 2
    for tr in tracks:
        assert tr.frames == n and {owner[id(f)] for f in tr.faces} in ({"a"}, {"b"})
        assert tr.first == 0 and tr.last == pytest.approx((n - 1) / fps)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), noise=st.floats(0.0, 0.25), gap=st.floats(0.3, 5.0),
       max_gap=st.floats(0.5, 3.0))
def test_a_gap_ends_a_track_only_when_longer_than_max_gap(seed, noise, gap, max_gap):
    """Seen for 2 s, away for `gap` s, back for 2 s at the same place: one track when the gap is within
    max_gap_s, two when it is longer (the first ended before the second started)."""
    rng = np.random.default_rng(seed)
    (a,) = people(1, rng)
    before = [(k / 5, [seen(rng, a, noise, k / 5, 100)]) for k in range(11)]  # 0 .. 2 s
    back = 2.0 + gap
    after = [(back + k / 5, [seen(rng, a, noise, back + k / 5, 100)]) for k in range(11)]
    # the empty frames between, as a sampler hands them over
    empty: list[tuple[float, list[FaceSeen]]] = [(2.0 + k / 5, []) for k in range(1, int(gap * 5))
                                                 if 2.0 + k / 5 < back]
    tracker = Tracker(max_gap_s=max_gap)
    events = run(tracker, before + empty + after)
    tracks = tracker.tracks()
    if back - 2.0 <= max_gap:  # the gap as the tracker sees it, rounding included
        assert len(tracks) == 1 and tracks[0].frames == 22
        assert [e.kind for e in events] == ["start", "end"]
    else:
        assert len(tracks) == 2 and [tr.frames for tr in tracks] == [11, 11]
        assert tracks[0].last == pytest.approx(2.0) and tracks[1].first == pytest.approx(back)
        assert [e.kind for e in events] == ["start", "end", "start", "end"]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), noise=st.floats(0.0, 0.2), lost=st.integers(1, 4))
def test_a_face_lost_and_found_elsewhere_keeps_its_track_and_a_stranger_does_not(seed, noise, lost):
    """A is lost for `lost` samples (within max_gap_s) and found again at the other side of the frame:
    same track. B, a stranger, appears where A was lost: a new track."""
    rng = np.random.default_rng(seed)
    a, b = people(2, rng)
    frames = [(k / 5, [seen(rng, a, noise, k / 5, 50)]) for k in range(5)]
    frames += [((5 + k) / 5, []) for k in range(lost)]
    t0 = (5 + lost) / 5
    frames += [(t0 + k / 5, [seen(rng, a, noise, t0 + k / 5, 900), seen(rng, b, noise, t0 + k / 5, 50)])
               for k in range(5)]
    tracker = Tracker(max_gap_s=1.0)
    run(tracker, frames)
    tracks = tracker.tracks()
    assert [tr.frames for tr in tracks] == [10, 5]
    assert tracks[0].faces[-1].box[0] == 900 and tracks[1].faces[0].box[0] == 50


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), noise=st.floats(0.1, 0.35), how=st.sampled_from(["mean", "vote"]))
def test_a_track_is_named_from_its_frames_together(seed, noise, how):
    rng = np.random.default_rng(seed)
    a, b = people(2, rng)
    judge = judge_for({"alice": a})
    faces = [seen(rng, a, noise, k / 5, 100, frame=k, quality=1 + k % 3) for k in range(10)]
    if how == "vote":  # the vote counts each face's own naming, as a caller hands it over
        for f in faces:
            got, c = judge(f.embedding)
            f.label, f.confidence = got or UNKNOWN, c
    label, confidence = name_track(faces, judge if how == "mean" else None, how)
    if how == "mean":  # the mean of noisy frames lies nearer the person than most single frames
        assert label == "alice" and 0 < confidence <= 1
    strangers = [seen(rng, b, noise, k / 5, 100, frame=k) for k in range(10)]
    assert name_track(strangers, judge, "mean")[0] == UNKNOWN


def test_faces_that_cannot_be_named_never_name_a_track():
    rng = np.random.default_rng(3)
    (a,) = people(1, rng)
    judge = judge_for({"alice": a})
    blurred = [seen(rng, a, 0.05, k / 5, 100, frame=k, reason="too_blurred", label="alice") for k in range(6)]
    assert name_track(blurred, judge, "mean") == (UNKNOWN, 0.0)
    assert name_track(blurred, None, "vote") == (UNKNOWN, 0.0)
    tracker = Tracker(judge=judge)
    for f in blurred:
        tracker.update(f.t, [f])
    (tr,) = tracker.tracks()
    assert tr.label == UNKNOWN and tr.frames == 6 and tr.unjudged == 6 and tr.per_frame == {}
    sharp = seen(rng, a, 0.05, 1.4, 100, frame=7, quality=0.1)
    tracker.update(1.4, [sharp])
    assert tr.label == "alice" and tr.best is sharp  # a judged face is a better view than any unjudged one


def test_best_frame_is_the_highest_quality_and_events_carry_the_track():
    rng = np.random.default_rng(4)
    (a,) = people(1, rng)
    tracker = Tracker(judge=judge_for({"alice": a}), max_gap_s=0.5)
    qualities = [1, 5, 3, 9, 2]
    started = []
    for k, q in enumerate(qualities):
        started += tracker.update(k / 5, [seen(rng, a, 0.1, k / 5, 100 + 5 * k, frame=k, quality=q)])
    assert [e.kind for e in started] == ["start"] and started[0].track.label == "alice"
    ended = tracker.update(2.0, [])
    assert [e.kind for e in ended] == ["end"] and ended[0].track.ended
    tr = ended[0].track
    assert tr.best.quality == 9 and tr.best.frame == 3 and tr.as_dict()["best"]["box"] == [115, 100, 195, 180]
    assert tracker.close() == [] and tracker.open_tracks() == []


def test_min_frames_drops_a_one_frame_mistake():
    rng = np.random.default_rng(5)
    a, b = people(2, rng)
    tracker = Tracker(min_frames=3, max_gap_s=0.5)
    events = []
    for k in range(6):
        faces = [seen(rng, a, 0.1, k / 5, 100)] + ([seen(rng, b, 0.1, k / 5, 500)] if k == 2 else [])
        events += tracker.update(k / 5, faces)
    events += tracker.close()
    assert [tr.frames for tr in tracker.tracks()] == [6] and tracker.tracks()[0].id == 1
    assert [e.kind for e in events] == ["start", "end"]


def test_kept_faces_are_bounded_and_time_cannot_go_back():
    rng = np.random.default_rng(6)
    (a,) = people(1, rng)
    tracker = Tracker(keep_faces=10)
    for k in range(50):
        tracker.update(k / 5, [seen(rng, a, 0.1, k / 5, 100, frame=k, quality=float(k % 7))])
    (tr,) = tracker.tracks()
    assert tr.frames == 50 and len(tr.faces) == 10 and min(f.quality for f in tr.faces) >= 5
    assert tr.per_frame == {UNKNOWN: 50} and tr.unjudged == 0  # counted over every face, not the kept ones
    with pytest.raises(ValueError):
        tracker.update(1.0, [])


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_ended_tracks_are_forgotten_when_asked_and_open_ones_stay():
    """A live camera hands out each end event, then forgets the track (memory over days); a face still in
    front of it keeps its track."""
    rng = np.random.default_rng(7)
    a, b = people(2, rng)
    tracker = Tracker(max_gap_s=0.5)
    ended = []
    for k in range(10):  # a leaves after 1 s; b stays
        faces = ([seen(rng, a, 0.1, k / 5, 100)] if k < 5 else []) + [seen(rng, b, 0.1, k / 5, 500)]
        ended += [e.track.id for e in tracker.update(k / 5, faces) if e.kind == "end"]
    assert len(ended) == 1 and len(tracker.tracks()) == 2
    tracker.forget_ended()
    assert [tr.id for tr in tracker.tracks()] == [tr.id for tr in tracker.open_tracks()] != ended
    assert len(tracker.open_tracks()) == 1
