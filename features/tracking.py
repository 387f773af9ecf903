"""Following faces across the frames of a video or a camera: frames of faces in, tracks out.

Pure numpy, no service code: a recorded video's task (app/worker), a camera's watch and `run.py watch`
all feed it the same way.

    tracker = Tracker(judge=recognizer_judge)        # judge: embedding -> (label or None, confidence)
    for t, faces in frames:                          # faces: list[FaceSeen] of one sampled frame
        for event in tracker.update(t, faces):       # TrackEvent("start" | "end", track)
            ...
    events = tracker.close()                         # ends the tracks still open
    tracks = tracker.tracks()                        # every track, ended or not, in order of start

A face joins the track it matches best, by cost: the distance between its unit-length embedding and
the track's (the last face's and the track's running mean, whichever is closer), plus how little its box
overlaps the track's last box. A pair is allowed when the embeddings are within `distance_max` and the
boxes overlap by `iou_min` (a face that moved a little), or, without the overlap, within the stricter
`refind_distance_max` (a face lost and found again elsewhere, or two people who crossed). Pairs are
taken greedily, cheapest first, one face per track and one track per face.

A track ends when no face has joined it for more than `max_gap_s` seconds. A track's name comes from its
frames together (`name_track`), never from one frame: a face too small or too blurred to be named
(`reason`) follows a track but never names it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

UNKNOWN = "unknown"

#: embedding (128,) -> (label, or None for nobody the model knows; confidence 0..1)
Judge = Callable[[np.ndarray], tuple["str | None", float]]


@dataclass
class FaceSeen:
    """One face in one sampled frame.

    t: seconds from the start of the video (or of the watch); box: (left, top, right, bottom) in the
    frame's pixels; embedding: the face's 128-d embedding; quality: higher is a better view of the face
    (the caller's measure, e.g. face width times sharpness); reason: why the face must not be named
    ("too_small", "too_blurred") or None; label and confidence: the per-frame naming ("unknown" when
    not named); frame: the index of the frame in the video.
    """
    t: float
    box: tuple[int, int, int, int]
    embedding: np.ndarray
    quality: float = 0.0
    reason: str | None = None
    label: str = UNKNOWN
    confidence: float = 0.0
    frame: int = 0

    @property
    def judged(self) -> bool:
        """May this face name a track (nothing made it unrecognisable)?"""
        return self.reason is None


@dataclass
class Track:
    """One face followed across frames.

    id: increasing from 1 in order of start; label: the person, or "unknown"; confidence: the naming's;
    first, last: seconds of the first and last face; frames: how many faces joined; best: the face of the
    best frame (a judged face before an unjudged one, then the highest quality); faces: the faces kept
    for naming (all of them up to `Tracker.keep_faces`, then the best ones); ended: no face will join;
    per_frame: how each judged face was named on its own (label -> faces, over every face that joined, kept
    or not); unjudged: faces that joined with a `reason`.
    """
    id: int
    first: float
    last: float
    best: FaceSeen
    label: str = UNKNOWN
    confidence: float = 0.0
    frames: int = 0
    faces: list[FaceSeen] = field(default_factory=list, repr=False)
    ended: bool = False
    confirmed: bool = False
    per_frame: dict[str, int] = field(default_factory=dict)
    unjudged: int = 0
    # matching state: the last face's box and unit embedding, and a running mean of unit embeddings
    _box: tuple[int, int, int, int] = (0, 0, 0, 0)
    _last: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    _mean: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)

    @property
    def duration(self) -> float:
        """Seconds from the first face to the last."""
        return self.last - self.first

    def as_dict(self) -> dict:
        """The track as JSON: label, known, confidence, first, last, frames, best {t, frame, box}."""
        return {"id": self.id, "label": self.label, "known": self.label != UNKNOWN,
                "confidence": round(float(self.confidence), 6), "first": round(self.first, 3),
                "last": round(self.last, 3), "frames": self.frames,
                "best": {"t": round(self.best.t, 3), "frame": self.best.frame, "box": list(self.best.box),
                         "quality": round(float(self.best.quality), 3)}}


@dataclass
class TrackEvent:
    """A track started (its first face, or its `min_frames`-th) or ended (unseen for `max_gap_s`, or
    closed)."""
    kind: str  # "start" | "end"
    track: Track


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(-1)
    n = float(np.linalg.norm(x))
    return x / n if n > 1e-12 else x


def iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes (0 when either is empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = float(w * h)
    area = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / area if area > 0 else 0.0


def _better(a: FaceSeen, b: FaceSeen) -> bool:
    """Is `a` a better view than `b`: judged before unjudged, then quality, then the earlier."""
    return (a.judged, a.quality) > (b.judged, b.quality)


def name_track(faces: Sequence[FaceSeen], judge: Judge | None = None, how: str = "mean") -> tuple[str, float]:
    """A track's name from its faces together -> (label or "unknown", confidence).

    Only judged faces (no `reason`) count; a track without one is "unknown" with confidence 0.
    how="mean": the quality-weighted mean of the faces' unit-length embeddings, scaled back to their
    mean length, judged once by `judge` (one embedding -> (label or None, confidence)); averaging cancels
    much of the noise of single frames, as the model's templates do for photos.
    how="vote": each face's own naming (its `label`/`confidence`, or `judge` of its embedding when given)
    is a vote weighted by quality times confidence; the label with the most weight wins when it holds
    more than half of it (else "unknown"), with its votes' mean confidence.
    """
    judged = [f for f in faces if f.judged]
    if not judged:
        return UNKNOWN, 0.0
    w = np.array([max(float(f.quality), 1e-6) for f in judged], np.float64)
    if how == "mean":
        if judge is None:
            raise ValueError("naming by mean embedding needs a judge")
        x = np.stack([np.asarray(f.embedding, np.float64).reshape(-1) for f in judged])
        norms = np.linalg.norm(x, axis=1)
        u = x / np.maximum(norms, 1e-12)[:, None]
        mean = (u * w[:, None]).sum(0)
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12) * float(norms.mean())
        label, confidence = judge(mean.astype(np.float32))
        return (label or UNKNOWN), float(confidence)
    if how == "vote":
        votes: dict[str, float] = {}
        confs: dict[str, list[float]] = {}
        for f, wf in zip(judged, w):
            if judge is not None:
                got, c = judge(np.asarray(f.embedding, np.float32))
                lab = got or UNKNOWN
            else:
                lab, c = f.label or UNKNOWN, f.confidence
            votes[lab] = votes.get(lab, 0.0) + wf * max(float(c), 1e-3)
            confs.setdefault(lab, []).append(float(c))
        top = max(votes, key=lambda k: votes[k])
        if votes[top] * 2 <= sum(votes.values()):
            return UNKNOWN, 0.0
        return top, float(np.mean(confs[top]))
    raise ValueError(f"unknown naming {how!r}")


class Tracker:
    """Faces of successive frames -> tracks, with a start and an end event for each.

    iou_min: the overlap with a track's last box that lets a face join within `distance_max`;
    distance_max: the largest distance between unit-length embeddings (0..2) for a face that overlaps;
    refind_distance_max: the largest distance for a face that does not overlap (lost and found again,
    or moved far between two samples); max_gap_s: a track unseen longer than this ends;
    min_frames: faces a track needs before its "start" (1: at once; a track that ends before is dropped
    without events: a detector's one-frame mistake is no visitor); judge: embedding -> (label or None,
    confidence), the model's recognizer, for naming tracks by `name_track(how=naming)`; without it a
    track is named by the vote of its faces' own labels; keep_faces: the faces a track keeps for naming
    (the best by quality once over; bounds the memory of a face that stays in front of a camera for hours).
    """

    def __init__(self, iou_min: float = 0.2, distance_max: float = 0.6, max_gap_s: float = 2.0,
                 refind_distance_max: float = 0.45, min_frames: int = 1, judge: Judge | None = None,
                 naming: str = "mean", keep_faces: int = 200) -> None:
        if min_frames < 1 or keep_faces < 1 or max_gap_s < 0:
            raise ValueError("min_frames and keep_faces must be >= 1, max_gap_s >= 0")
        self.iou_min, self.distance_max, self.max_gap_s = float(iou_min), float(distance_max), float(max_gap_s)
        self.refind_distance_max = float(min(refind_distance_max, distance_max))
        self.min_frames, self.judge, self.keep_faces = int(min_frames), judge, int(keep_faces)
        self.naming = naming if judge is not None else "vote"
        self._open: list[Track] = []
        self._done: list[Track] = []
        self._next_id = 1
        self._t = float("-inf")

    def tracks(self) -> list[Track]:
        """Every confirmed track (ended or open), in order of id."""
        return sorted((tr for tr in self._done + self._open if tr.confirmed), key=lambda tr: tr.id)

    def forget_ended(self) -> None:
        """Drop the tracks that ended (their end events were handed out): a live camera runs for days, and
        `tracks()` would otherwise keep every visitor it ever saw."""
        self._done.clear()

    def open_tracks(self) -> list[Track]:
        """The confirmed tracks not ended yet."""
        return [tr for tr in self._open if tr.confirmed]

    def update(self, t: float, faces: Sequence[FaceSeen]) -> list[TrackEvent]:
        """The faces of the frame at `t` seconds (times must not go back) -> the events they cause: the
        ends of tracks unseen for more than max_gap_s, then the starts of new (or newly confirmed) tracks."""
        t = float(t)
        if t < self._t:
            raise ValueError(f"time went back: {t} after {self._t}")
        self._t = t
        events = self._expire(t)
        pairs = self._match(faces)
        taken = {j for _, j in pairs}
        for i, j in pairs:
            events += self._join(self._open[i], faces[j])
        for j, face in enumerate(faces):
            if j not in taken:
                tr = Track(id=0, first=face.t, last=face.t, best=face)
                self._open.append(tr)
                events += self._join(tr, face)
        return events

    def close(self) -> list[TrackEvent]:
        """End every open track (the video is over, the watch stops) -> their "end" events."""
        return self._expire(float("inf"))

    # -- internals --------------------------------------------------------------------------------

    def _expire(self, t: float) -> list[TrackEvent]:
        events: list[TrackEvent] = []
        keep: list[Track] = []
        for tr in self._open:
            if t - tr.last > self.max_gap_s:
                tr.ended = True
                if tr.confirmed:
                    self._rename(tr)
                    self._done.append(tr)
                    events.append(TrackEvent("end", tr))
            else:
                keep.append(tr)
        self._open = keep
        return events

    def _match(self, faces: Sequence[FaceSeen]) -> list[tuple[int, int]]:
        """Greedy assignment by cost over the allowed (track, face) pairs."""
        if not self._open or not faces:
            return []
        cands: list[tuple[float, int, int]] = []
        units = [_unit(f.embedding) for f in faces]
        for i, tr in enumerate(self._open):
            for j, f in enumerate(faces):
                d = min(float(np.linalg.norm(units[j] - tr._last)), float(np.linalg.norm(units[j] - tr._mean)))
                o = iou(tr._box, f.box)
                if d <= self.refind_distance_max or (o >= self.iou_min and d <= self.distance_max):
                    cands.append((d + 0.5 * (1.0 - o), i, j))
        cands.sort()
        used_t: set[int] = set()
        used_f: set[int] = set()
        pairs = []
        for _, i, j in cands:
            if i not in used_t and j not in used_f:
                used_t.add(i)
                used_f.add(j)
                pairs.append((i, j))
        return pairs

    def _join(self, tr: Track, face: FaceSeen) -> list[TrackEvent]:
        u = _unit(face.embedding)
        if tr.frames == 0:
            tr._mean = u.copy()
        else:  # a running mean that follows slow changes (pose, light) and forgets one odd frame
            m = 0.7 * tr._mean + 0.3 * u
            tr._mean = _unit(m)
        tr._last, tr._box = u, tuple(int(v) for v in face.box)  # type: ignore[assignment]
        tr.frames += 1
        if face.judged:
            tr.per_frame[face.label] = tr.per_frame.get(face.label, 0) + 1
        else:
            tr.unjudged += 1
        tr.last = max(tr.last, face.t)
        if _better(face, tr.best) or tr.frames == 1:
            tr.best = face
        tr.faces.append(face)
        if len(tr.faces) > self.keep_faces:  # drop the worst view, keep the order of the rest
            worst = min(range(len(tr.faces)), key=lambda k: (tr.faces[k].judged, tr.faces[k].quality))
            del tr.faces[worst]
        if face.judged or not tr.confirmed:
            self._rename(tr)
        if not tr.confirmed and tr.frames >= self.min_frames:
            tr.confirmed, tr.id = True, self._next_id
            self._next_id += 1
            return [TrackEvent("start", tr)]
        return []

    def _rename(self, tr: Track) -> None:
        # a vote counts the faces' own labels (the caller's per-frame naming): judging every kept face
        # again at every frame would cost a track's length squared
        judge = self.judge if self.naming == "mean" else None
        tr.label, tr.confidence = name_track(tr.faces, judge, self.naming)
