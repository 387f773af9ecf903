"""Recorded videos without the service: what a file is (preprocessor/video.sniff), its frames sampled at a
rate (sample), and a clip with a known timeline through a real model (modelization/video.analyse_video):
the right people at the right seconds. The clips are composed at test time from ../shared/faces
(bench/clips.py) and written with OpenCV's VideoWriter."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import wave
import zipfile
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.worker.tasks import extract_chunk, train_bundle
from bench.clips import Appearance, write_clip
from constants import Settings
from modelization.recognizer import load_bundle
from modelization.video import analyse_video
from preprocessor.uploads import Photo
from preprocessor.video import NOT_A_VIDEO, VIDEO_TOO_LONG, Sampling, VideoError, probe, sample, sniff
from test.conftest import pick_people

TOLERANCE_S = 0.5  # a track starts and ends within this of the truth: 0.2 s sampling, plus a missed frame


def wav_bytes(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(struct.pack("<h", 0) * int(8000 * seconds))
    return buf.getvalue()


def jpeg_bytes(faces_dir: Path) -> bytes:
    return (faces_dir / "wild" / "obama.jpg").read_bytes()


@pytest.fixture(scope="module")
def people(faces_dir):
    return pick_people(faces_dir, 4, 14)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings.from_env(data_dir=tmp_path_factory.mktemp("video"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory, people, faces_dir):
    """A known timeline: A walks right from 0.5 to 4 s, B walks left from 2 to 6 s (they cross at ~3 s), a
    stranger stands from 7 to 9 s; written as mp4 (mp4v) and avi (MJPG), 10 s at 10 frames a second."""
    names = list(people)
    stranger = sorted((faces_dir / "strangers").glob("*.jpg"))[3]
    timeline = [Appearance(names[0], tuple(people[names[0]][8:14]), 0.5, 4.0),
                Appearance(names[1], tuple(people[names[1]][8:14]), 2.0, 6.0, x0=0.8, x1=0.2, y0=0.5, y1=0.5),
                Appearance("unknown", (stranger,), 7.0, 9.0, x0=0.5, x1=0.5)]
    folder = tmp_path_factory.mktemp("clips")
    return timeline, {ext: write_clip(folder / f"clip{ext}", timeline, 10.0, fps=10) for ext in (".mp4", ".avi")}


@pytest.fixture(scope="module")
def recognizer(people, settings, faces_dir):
    """A real model of the 4 people (8 photos each; the clip shows them in 6 others)."""
    files = [{"label": n, "filename": f"{n}/{p.name}"} for n, ps in people.items() for p in ps[:8]]
    photos = [Photo(f["label"], f["filename"], (faces_dir / "lfw62" / f["filename"]).read_bytes()) for f in files]
    bundle = train_bundle({"id": "video", "options": {"seed": 3}}, files, extract_chunk(photos, settings), settings,
                          lambda *a: None)
    return load_bundle(bundle, settings)


# --------------------------------------------------------------------------- what a file is

def test_sniff_knows_videos_and_names_what_is_not_one(clips, faces_dir):
    _, paths = clips
    assert sniff(paths[".mp4"].read_bytes()) == "mp4" and sniff(paths[".avi"].read_bytes()) == "avi"
    assert sniff(b"\x1a\x45\xdf\xa3" + b"\x00" * 60) == "matroska"
    cases = {jpeg_bytes(faces_dir): "JPEG", wav_bytes(): "WAV", b"": "empty",
             b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 40: "audio", b"ID3\x04" + b"\x00" * 40: "MP3",
             (faces_dir / "wild" / "alex-lacamoire.png").read_bytes(): "PNG", b"hello, world\n": "not a video"}
    for data, word in cases.items():
        with pytest.raises(VideoError) as err:
            sniff(data)
        assert err.value.code == NOT_A_VIDEO and word in err.value.message, err.value.message


# --------------------------------------------------------------------------- frames

@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_frames_are_sampled_at_the_rate_asked(clips, ext):
    _, paths = clips
    info = probe(str(paths[ext]))
    assert (info.width, info.height, info.fps, info.frames) == (640, 360, 10.0, 100)
    for fps, n in ((5, 50), (2, 20), (10, 100), (3, 30)):
        state = Sampling(info)
        times = [f.t for f in sample(str(paths[ext]), fps, 960, None, state)]
        assert len(times) == n == state.sampled and state.decoded == 100 and not state.truncated
        gaps = {round(b - a, 3) for a, b in pairwise(times)}
        assert times[0] == 0 and max(gaps) <= round(1 / fps, 3) + 0.1  # (3 fps of 10: 0.3 and 0.4 s)


def test_frames_are_scaled_down_to_max_side_and_keep_their_full_size(clips):
    _, paths = clips
    frame = next(sample(str(paths[".mp4"]), 5, 320))
    assert frame.rgb.shape == (180, 320, 3) and frame.scale == 0.5 and frame.full_bgr.shape == (360, 640, 3)


def test_a_cut_avi_gives_what_it_holds_and_says_it_was_cut(clips, tmp_path):
    _, paths = clips
    data = paths[".avi"].read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) // 2])
    state = Sampling(probe(str(cut)))
    frames = list(sample(str(cut), 5, 960, None, state))
    assert 10 <= len(frames) < 50 and state.truncated


def test_a_cut_mp4_an_empty_file_and_garbage_are_not_videos(clips, tmp_path):
    _, paths = clips
    data = paths[".mp4"].read_bytes()
    for name, body in (("cut.mp4", data[:len(data) // 2]), ("empty.mp4", b""),
                       ("garbage.mp4", b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 64),
                       ("audio.wav", wav_bytes())):
        path = tmp_path / name
        path.write_bytes(body)
        with pytest.raises(VideoError) as err:
            list(sample(str(path), 5, 960))
        assert err.value.code == NOT_A_VIDEO, name


def test_a_video_over_the_seconds_limit_is_refused(clips):
    _, paths = clips
    with pytest.raises(VideoError) as err:
        probe(str(paths[".mp4"]), max_seconds=9.0)
    assert err.value.code == VIDEO_TOO_LONG and "10.0 s" in err.value.message
    with pytest.raises(VideoError) as err:
        list(sample(str(paths[".mp4"]), 5, 960, max_seconds=9.0))
    assert err.value.code == VIDEO_TOO_LONG


# --------------------------------------------------------------------------- people and times

def check_timeline(tracks: list[dict], timeline: list[Appearance]) -> None:
    """Each appearance of a known person: one track with their name at that time, starting and ending within
    TOLERANCE_S of the truth. No track carries the name of someone who was not there at its time; the stranger
    is never named."""
    for app in timeline:
        named = [t for t in tracks if t["label"] == app.label and t["first"] < app.end + TOLERANCE_S
                 and t["last"] > app.start - TOLERANCE_S]
        if app.label == "unknown":
            during = [t for t in tracks if t["first"] < app.end and t["last"] >= app.start]
            assert during and all(not t["known"] for t in during), during
            continue
        assert len(named) == 1, (app.label, tracks)
        (track,) = named
        assert abs(track["first"] - app.start) <= TOLERANCE_S and abs(track["last"] - app.end) <= TOLERANCE_S, track
        assert app.start - TOLERANCE_S <= track["best"]["t"] <= app.end
    for t in tracks:
        if t["known"]:
            assert any(a.label == t["label"] and t["first"] < a.end + TOLERANCE_S and t["last"] > a.start - TOLERANCE_S
                       for a in timeline), t


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_a_clip_gives_the_right_people_at_the_right_times(clips, recognizer, settings, ext):
    timeline, paths = clips
    seen = []
    result, thumbs = analyse_video(str(paths[ext]), recognizer, 5, settings, lambda d, n: seen.append((d, n)))
    assert result["video"]["frames"] == 100 and result["sampling"]["frames"] == 50 and not result["truncated"]
    check_timeline(result["tracks"], timeline)
    assert len(thumbs) == len(result["tracks"]) and all(t.startswith(b"\xff\xd8\xff") for t in thumbs)
    assert [t["id"] for t in result["tracks"]] == list(range(1, len(result["tracks"]) + 1))
    assert seen[-1][0] == 50 and all(d <= n for d, n in seen)


def test_a_worker_sweeps_only_the_temporary_videos_no_task_can_still_hold(tmp_path):
    import os
    import time

    from app.worker.temp import TEMP_PREFIX, sweep_temp
    s = Settings.from_env(data_dir=tmp_path, max_video_seconds=60.0)
    s.var_dir.mkdir(parents=True)
    old, recent, other = (s.var_dir / f"{TEMP_PREFIX}a.bin", s.var_dir / f"{TEMP_PREFIX}b.bin",
                          s.var_dir / "jobs.sqlite")
    for path in (old, recent, other):
        path.write_bytes(b"x")
    past = time.time() - 2 * 60 - 3600 - 10
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert sweep_temp(s) == 1 and not old.exists() and recent.exists() and other.exists()


def test_the_broker_checks_a_video_request_as_the_front_makes_it():
    """VIDEO and VIDEOGET messages: exact fields, ids, fps within FR_MAX_VIDEO_FPS, one video frame within
    FR_MAX_VIDEO_BYTES (app/wire/protocol.py); anything else is a ProtocolError, dropped before use."""
    from app.wire import protocol as p
    s = Settings.from_env(max_video_bytes=2000, max_video_fps=10.0)
    ok = {"id": "0d5c0a3e-5a4b-4c1e-9d7e-2f0a7c1b9e11", "model": "1d5c0a3e-5a4b-4c1e-9d7e-2f0a7c1b9e11",
          "tenant": "acme", "name": "clip.mp4", "fps": 5.0, "deadline": 1e9}
    frames = lambda header, *blobs: p.pack(p.VIDEO, header, list(blobs))  # noqa: E731
    command, header, blobs = p.parse_front(frames(ok, b"x" * 2000), s)
    assert command == p.VIDEO and header == ok and blobs == [b"x" * 2000]
    bad = [(ok, [b"x" * 2001]), (ok, [b""]), (ok, []), (ok, [b"x", b"y"]), ({**ok, "fps": 11}, [b"x"]),
           ({**ok, "fps": 0}, [b"x"]), ({**ok, "model": "../etc"}, [b"x"]), ({**ok, "extra": 1}, [b"x"]),
           ({k: v for k, v in ok.items() if k != "fps"}, [b"x"]), ({**ok, "callback": {"url": "ftp://x"}}, [b"x"])]
    for header, blobs in bad:
        with pytest.raises(p.ProtocolError):
            p.parse_front(frames(header, *blobs), s)
    assert p.parse_front(p.pack(p.VIDEOGET, {"id": ok["id"], "tenant": None, "thumb": 3}), s)[1]["thumb"] == 3
    for header in ({"id": ok["id"], "thumb": 0}, {"id": ok["id"], "thumb": "1"}, {"id": "x"}):
        with pytest.raises(p.ProtocolError):
            p.parse_front(p.pack(p.VIDEOGET, header), s)


# --------------------------------------------------------------------------- hostile files (docs/security.md)

def mjpeg_avi(path: Path, frames: int, size: tuple[int, int] = (16, 16), rate: int | None = None,
              side: int | None = None) -> Path:
    """A small MJPEG avi written by OpenCV, then lied about: `rate` frames a second in its headers (avih,
    strh), and/or every frame's JPEG claiming `side` x `side` pixels (its SOF0 patched; the data stays small)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 40 + i % 100, np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    if rate is not None:
        at = data.index(b"avih")
        struct.pack_into("<I", data, at + 8, max(1, 1_000_000 // rate) if rate else 0)
        at = data.index(b"strh")
        struct.pack_into("<II", data, at + 28, 1, rate)  # dwScale, dwRate
    if side is not None:
        for at in [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xC0]:
            struct.pack_into(">HH", data, at + 5, side, side)
    path.write_bytes(data)
    return path


def test_playlists_and_other_files_are_never_opened_as_videos(tmp_path, faces_dir):
    """An HLS playlist or an ffconcat list names files or URLs for FFmpeg to read (a local file read, or a
    request from the worker: SSRF); a GIF is a video to FFmpeg. The worker opens an upload only if sniff knows
    its container, and then by that container's demuxer alone: each is NOT_A_VIDEO, nothing it names read."""
    secret = mjpeg_avi(tmp_path / "secret.avi", 20)
    gif = tmp_path / "g.gif"
    gif.write_bytes(b"GIF89a" + bytes(64))
    zipped = tmp_path / "z.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        z.write(secret, "clip.mp4")
    hls = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2,\nfile:{secret}\n#EXT-X-ENDLIST\n"
    bodies = {"hls.mp4": hls.encode(), "plain.m3u8": hls.replace("file:", "").encode(),
              "http.mp4": hls.replace(f"file:{secret}", "http://127.0.0.1:9/x.ts").encode(),
              "list.mp4": f"ffconcat version 1.0\nfile '{secret}'\n".encode(),
              "photo.mp4": jpeg_bytes(faces_dir),
              "png.mp4": cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
              "gif.mp4": gif.read_bytes(), "zip.mp4": zipped.read_bytes()}
    for name, body in bodies.items():
        path = tmp_path / name
        path.write_bytes(body)
        for read in (lambda p: probe(p), lambda p: list(sample(p, 5, 960))):
            with pytest.raises(VideoError) as err:
                read(str(path))
            assert err.value.code == NOT_A_VIDEO, name
    # an mp4's header on a playlist: FFmpeg's mov demuxer, which finds no movie in it
    path = tmp_path / "ftyp.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + hls.encode())
    with pytest.raises(VideoError):
        list(sample(str(path), 5, 960))


def test_timestamps_that_stand_still_cannot_make_a_worker_decode_without_end(tmp_path):
    """A header claiming a million frames a second (out of range: the time of a frame is then its timestamp,
    here a microsecond apart) over 3000 frames: FR_MAX_VIDEO_SECONDS counts at least index / MAX_FPS per frame,
    so the frames decoded stay bounded by the limit whatever the timestamps say."""
    path = mjpeg_avi(tmp_path / "fast.avi", 3000, rate=1_000_000)
    with pytest.raises(VideoError) as err:
        list(sample(str(path), 5, 960, max_seconds=1.0))
    assert err.value.code == VIDEO_TOO_LONG
    state = Sampling(probe(str(path)))
    frames = list(sample(str(path), 5, 960, max_seconds=10.0, sampling=state))
    assert state.decoded == 3000 and [f.index for f in frames][:3] == [0, 200, 400]


def test_odd_but_honest_headers_are_read(tmp_path):
    """A one-frame video gives its frame; a header with 0 frames a second is read at FFmpeg's default rate."""
    one = mjpeg_avi(tmp_path / "one.avi", 1)
    assert [f.index for f in sample(str(one), 5, 960)] == [0]
    zero = mjpeg_avi(tmp_path / "zero.avi", 30, rate=0)
    state = Sampling(probe(str(zero)))
    assert len(list(sample(str(zero), 5, 960, max_seconds=60, sampling=state))) >= 1 and state.decoded == 30


@pytest.mark.parametrize("first", [True, False])
def test_frames_claiming_a_huge_size_fail_in_bounded_memory(tmp_path, first):
    """JPEG frames claiming 20000 x 20000 pixels (1.2 GB as BGR) in a 2 KB file, from the first frame or from
    the second on: no frame decoded at that size, the worker's peak memory far under it (a child process)."""
    path = mjpeg_avi(tmp_path / "huge.avi", 3, side=20000)
    if not first:  # the first frame honest, the others lying
        honest = mjpeg_avi(tmp_path / "honest.avi", 3)
        data, lie = bytearray(honest.read_bytes()), path.read_bytes()
        at = data.index(b"\xff\xc0")
        data[at:at + 9] = honest.read_bytes()[at:at + 9]
        rest = [i for i in range(len(lie) - 1) if lie[i] == 0xFF and lie[i + 1] == 0xC0][1:]
        for i in rest:
            data[i:i + 9] = lie[i:i + 9]
        path.write_bytes(bytes(data))
    # the peak is the child's own VmHWM: ru_maxrss also counts the process it was forked from (Linux keeps it
    # across exec), and a pytest process that has loaded the embedders holds more than the bound
    code = ("import re, sys\nfrom pathlib import Path\nfrom preprocessor.video import sample, VideoError\n"
            "try:\n    shapes = [f.full_bgr.shape for f in sample(sys.argv[1], 10, 960)]\n"
            "except VideoError as e:\n    shapes = e.code\n"
            "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', Path('/proc/self/status').read_text()).group(1)\n"
            "print(shapes, int(hwm) // 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    shapes, peak_mb = out.stdout.rsplit(" ", 1)
    assert "20000" not in shapes and int(peak_mb) < 400, out.stdout
    assert shapes == ("NOT_A_VIDEO" if first else "[(16, 16, 3)]"), out.stdout


@pytest.mark.parametrize("step_ms", [-100, 0, 1500])
def test_timestamps_that_run_backwards_stand_still_or_leap_are_read_in_frame_order(tmp_path, step_ms):
    """A matroska video (OpenCV-written, MJPEG, 10 frames a second) whose blocks' timestamps are rewritten to
    run backwards, stand still or leap 1.5 s a frame: every frame is decoded once, samples keep their order
    and their times come from the stream's frame rate; nothing loops or hangs."""
    path = tmp_path / "t.mkv"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 16))
    for i in range(20):
        writer.write(np.full((16, 16, 3), i * 10, np.uint8))
    writer.release()
    data, at, blocks = bytearray(path.read_bytes()), 0, []
    while (at := data.find(b"\xa3", at + 1)) > 0:  # SimpleBlock: id, size (vint), track 1 (0x81), int16 time
        size_len = next((n for n in range(1, 9) if data[at + 1] & (0x80 >> (n - 1))), 9)
        if size_len <= 8 and data[at + 1 + size_len] == 0x81:
            blocks.append(at + 2 + size_len)
    assert len(blocks) >= 20
    for k, block in enumerate(blocks[-20:]):
        struct.pack_into(">h", data, block, step_ms * k)
    path.write_bytes(bytes(data))
    state = Sampling(probe(str(path)))
    times = [f.t for f in sample(str(path), 5, 960, max_seconds=60, sampling=state)]
    assert state.decoded == 20 and times == sorted(times) and len(times) == 10
