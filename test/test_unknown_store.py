"""The broker's store of unknown faces (app/broker/unknown.py) on its own: grouping, stable ids, merges,
moves, discards, naming claims, quotas, expiry and deletion, on real embeddings of real photos."""
from __future__ import annotations

import numpy as np
import pytest

from app.broker.store import JobStore
from app.broker.unknown import UnknownFaces
from app.wire import protocol as p
from app.wire.protocol import FrontError, ProtocolError
from constants import Settings
from constants.states import JobState
from test.conftest import pick_people

JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 2000


@pytest.fixture(scope="module")
def people(faces_dir):
    """[(n, 128) embeddings] of 2 real people, 5 photos each, whose photos the grouping puts together (the
    first person of pick_people's three is split in two at the tuned rate: bench/grouping.py measures how
    often that happens)."""
    from features.extract import describe_photo
    settings = Settings.from_env(environ={})
    out = {}
    for person, paths in pick_people(faces_dir, 3, 5).items():
        out[person] = np.asarray([describe_photo(path.read_bytes(), settings)[0].embedding for path in paths],
                                 np.float32)
    return [out[p] for p in sorted(out)][1:]


def make(tmp_path, **over) -> tuple[UnknownFaces, JobStore, str]:
    s = Settings.from_env(environ={}, data_dir=tmp_path, **over)
    s.ensure_dirs()
    store = JobStore(s.db_path, s.uploads_dir)
    model = "0b7a7e52-53a5-4c53-8a6b-2f0f6bb0e1f1"
    store.create(model, "m", {}, 10, 2, "acme")
    store.execute("UPDATE jobs SET state = ? WHERE id = ?", (JobState.DONE.value, model))
    return UnknownFaces(s, lambda: store), store, model


def keep(u: UnknownFaces, model: str, x: np.ndarray, tenant: str | None = "acme", now: float | None = None) -> list:
    faces = [{"embedding": [float(v) for v in row], "quality": {"face_px": 120}, "box": [1, 2, 3, 4]} for row in x]
    return u.keep(model, tenant, None, {"kind": "predict", "request": "r"}, faces, [JPEG] * len(x), now)["faces"]


def test_faces_of_one_person_share_a_group_whose_id_stays_as_it_grows(tmp_path, people):
    u, _, model = make(tmp_path)
    a, b = people
    first = keep(u, model, a[:2])
    assert first[0]["cluster"] == first[1]["cluster"]
    group = first[0]["cluster"]
    later = keep(u, model, np.concatenate([b[:3], a[2:]]))
    assert [f["cluster"] for f in later[3:]] == [group, group, group]  # grown, same id
    assert len({f["cluster"] for f in later[:3]}) == 1 and later[0]["cluster"] != group
    clusters = u.groups(model, "acme")["clusters"]
    assert [c_["size"] for c_ in clusters] == [5, 3]  # largest first
    assert clusters[0]["id"] == group and len(set(clusters[0]["faces"])) == 5


def test_merge_move_discard_and_stale_ids(tmp_path, people):
    u, _, model = make(tmp_path)
    a, b = people
    ga = keep(u, model, a[:3])[0]["cluster"]
    fb = keep(u, model, b[:2])
    gb = fb[0]["cluster"]
    merged = u.merge(model, "acme", [gb, ga])
    assert merged["cluster"] == ga and merged["size"] == 5  # the largest keeps its id
    with pytest.raises(FrontError) as stale:
        u.merge(model, "acme", [gb, ga])
    assert stale.value.code == "GROUP_MERGED" and ga in stale.value.message
    with pytest.raises(FrontError) as one:
        u.merge(model, "acme", [ga, ga])
    assert one.value.code == "BAD_PARAMETER"
    moved = u.move(model, "acme", ga, fb[0]["unknown_id"], None)
    assert moved["cluster"] not in (ga, gb)
    assert sorted(c["size"] for c in u.groups(model, "acme")["clusters"]) == [1, 4]
    with pytest.raises(FrontError) as missing:
        u.move(model, "acme", ga, fb[0]["unknown_id"], None)  # no longer in that group
    assert missing.value.code == "NOT_FOUND"
    assert u.discard(model, "acme", ga)["removed"] == 4
    assert [c["size"] for c in u.groups(model, "acme")["clusters"]] == [1]
    assert u.db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 1
    with pytest.raises(FrontError) as gone:
        u.discard(model, "acme", ga)
    assert gone.value.code == "NOT_FOUND"


def test_another_tenants_model_is_not_found_and_a_model_not_built_is_not_ready(tmp_path, people):
    u, store, model = make(tmp_path)
    group = keep(u, model, people[0][:1])[0]["cluster"]
    for call in (lambda: u.groups(model, "other"), lambda: keep(u, model, people[0][:1], "other"),
                 lambda: u.discard(model, "other", group), lambda: u.chip(model, "other", group, group)):
        with pytest.raises(FrontError) as refused:
            call()
        assert refused.value.code == "NOT_FOUND"
    store.execute("UPDATE jobs SET state = 'training' WHERE id = ?", (model,))
    with pytest.raises(FrontError) as building:
        u.groups(model, "acme")
    assert building.value.code == "NOT_READY"


def test_one_naming_per_group_at_a_time_and_a_failed_naming_gives_the_faces_back(tmp_path, people):
    u, store, model = make(tmp_path)
    a = people[0]
    group = keep(u, model, a[:3])[0]["cluster"]
    first, second = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
    records = u.namings.claim(model, group, "Visitor", first)
    assert len(records) == 3 and all(r["label"] == "Visitor" and len(r["features"]["embedding"]) == 128
                                     for r in records)
    with pytest.raises(FrontError) as twice:
        u.namings.claim(model, group, "Someone", second)
    assert twice.value.code == "CONFLICT"
    with pytest.raises(FrontError) as busy:
        u.discard(model, "acme", group)
    assert busy.value.code == "CONFLICT"
    u.namings.named(first)
    assert u.groups(model, "acme")["clusters"] == []
    store.create(first, "m", {}, 10, 2, "acme")
    store.execute("UPDATE jobs SET state = 'failed' WHERE id = ?", (first,))
    u.namings.on_ended(store.get(first))  # the build failed: the group waits again, whole
    assert [c["size"] for c in u.groups(model, "acme")["clusters"]] == [3]
    u.namings.claim(model, group, "Visitor", second)
    u.namings.named(second)
    store.create(second, "m", {}, 10, 2, "acme")
    store.execute("UPDATE jobs SET state = 'done' WHERE id = ?", (second,))
    rest = keep(u, model, people[1][:2])
    u.namings.on_ended(store.get(second))  # built: the parent's faces follow the model the client now uses
    assert [c["id"] for c in u.groups(second, "acme")["clusters"]] == [rest[0]["cluster"]]
    assert u.erase("Visitor", "acme") == 3  # erasing the person takes the faces named as them
    u.on_deleted(second)
    assert u.db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 0


def test_keeping_past_the_tenants_quota_keeps_nothing(tmp_path, people):
    u, _, model = make(tmp_path, tenant_max_bytes=6000)
    a = people[0]
    keep(u, model, a[:1])
    with pytest.raises(FrontError) as full:
        keep(u, model, a[1:4])
    assert full.value.code == "QUOTA_EXCEEDED"
    assert u.db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 1  # none of the three, not some


def test_faces_expire_after_the_retention_and_go_with_their_model(tmp_path, people):
    u, _, model = make(tmp_path, unknown_retention_days=1.0)
    a, b = people
    keep(u, model, a[:2], now=1000.0)
    keep(u, model, b[:1])
    assert u.expire(1000.0 + 86400 + 1) == 2
    assert u.db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 1
    u.on_deleted(model)
    assert u.db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 0


@pytest.mark.parametrize("change", [
    {"faces": []}, {"faces": [{"embedding": [0.0] * 127}]}, {"faces": [{"embedding": [float("nan")] * 128}]},
    {"model": "../x"}, {"source": {"kind": "x", "evil": 1}}, {"extra": 1}, {"faces": [{"embedding": [0.0] * 128,
                                                                                       "box": [1, 2, 3]}]}])
def test_bad_keep_messages_are_refused(change):
    header = {"model": "0b7a7e52-53a5-4c53-8a6b-2f0f6bb0e1f1", "tenant": "acme", "key": None,
              "source": {"kind": "predict"}, "faces": [{"embedding": [0.0] * 128}], **change}
    blobs = [JPEG] * max(1, len(header["faces"]))
    with pytest.raises(ProtocolError):
        p.check_unknown(p.UKEEP, header, blobs[:len(header["faces"])] if header["faces"] else blobs)


def test_a_chip_that_is_not_a_jpeg_and_ids_that_are_not_ids_are_refused():
    header = {"model": "0b7a7e52-53a5-4c53-8a6b-2f0f6bb0e1f1", "tenant": None, "key": None,
              "source": {"kind": "predict"}, "faces": [{"embedding": [0.0] * 128}]}
    with pytest.raises(ProtocolError):
        p.check_unknown(p.UKEEP, header, [b"GIF89a"])
    with pytest.raises(ProtocolError):
        p.check_unknown(p.UDISCARD, {"model": header["model"], "cluster": "../../etc"}, [])
    with pytest.raises(ProtocolError):
        p.check_unknown(p.UMERGE, {"model": header["model"], "clusters": ["0" * 16] * 101}, [])


def test_a_correction_claims_exactly_the_faces_named_and_a_face_that_joins_meanwhile_stays(tmp_path, people):
    u, _, model = make(tmp_path)
    a = people[0]
    kept = keep(u, model, a[:3])
    new = "33333333-3333-4333-8333-333333333333"
    with pytest.raises(FrontError) as unknown:
        u.namings.claim(model, None, "Visitor", new, [kept[0]["unknown_id"], "0123456789abcdef"])
    assert unknown.value.code == "NOT_FOUND" and model not in u.namings.naming  # nothing claimed
    records = u.namings.claim(model, None, "Visitor", new, [kept[0]["unknown_id"], kept[1]["unknown_id"]])
    assert len(records) == 2
    late = keep(u, model, a[3:4])  # joins the group while the correction is being registered
    u.namings.named(new)
    waiting = {f for c in u.groups(model, "acme")["clusters"] for f in c["faces"]}
    assert waiting == {kept[2]["unknown_id"], late[0]["unknown_id"]}


def test_ids_of_another_model_of_the_same_tenant_reach_nothing_there(tmp_path):
    """A hostile client of one tenant takes a group's and a face's ids from its model A and uses them through its
    model B: every read and act is NOT_FOUND, and A's faces stay as they were."""
    u, store, a = make(tmp_path)
    b = "5d3c1f0e-2a9b-4c8d-9e7f-6a5b4c3d2e1f"
    store.create(b, "m", {}, 10, 2, "acme")
    store.execute("UPDATE jobs SET state = ? WHERE id = ?", (JobState.DONE.value, b))
    rng = np.random.default_rng(7)
    kept = keep(u, a, rng.normal(size=(2, 128)).astype(np.float32))
    mine = keep(u, b, rng.normal(size=(1, 128)).astype(np.float32))[0]
    group, face = kept[0]["cluster"], kept[0]["unknown_id"]
    for call in (lambda: u.chip(b, "acme", group, face), lambda: u.discard(b, "acme", group),
                 lambda: u.merge(b, "acme", [group, mine["cluster"]]),
                 lambda: u.move(b, "acme", group, face, None), lambda: u.move(b, "acme", mine["cluster"],
                                                                              mine["unknown_id"], group),
                 lambda: u.namings.claim(b, None, "eve", "7e6d5c4b-3a29-4180-9f8e-7d6c5b4a3928", [face]),
                 lambda: u.namings.claim(b, group, "eve", "7e6d5c4b-3a29-4180-9f8e-7d6c5b4a3928")):
        with pytest.raises(FrontError) as refused:
            call()
        assert refused.value.code == "NOT_FOUND"
    assert u.groups(a, "acme")["faces"] == 2 and u.namings.naming == {}
    assert u.chip(a, "acme", group, face)[0]["unknown_id"] == face


def test_a_discarded_or_deleted_face_leaves_no_copy_on_disk(tmp_path):
    """secure_delete zeroes the freed pages and the write-ahead log is emptied: the chip's bytes are in no
    file of the store once its group is discarded or its model deleted."""
    u, _, model = make(tmp_path)
    rng = np.random.default_rng(3)
    marks = []
    for i in range(2):
        mark = b"\xff\xd8\xff\xe0" + f"CHIP-MARK-{i}-".encode() * 200
        faces = [{"embedding": [float(v) for v in rng.normal(size=128)], "quality": None, "box": None}]
        kept = u.keep(model, "acme", None, {"kind": "predict", "request": "r"}, faces, [mark])["faces"][0]
        marks.append((mark, kept))

    def on_disk(mark: bytes) -> bool:
        return any(mark[4:40] in f.read_bytes() for f in tmp_path.rglob("unknown.sqlite*"))

    assert on_disk(marks[0][0]) and on_disk(marks[1][0])
    u.discard(model, "acme", marks[0][1]["cluster"])
    assert not on_disk(marks[0][0]) and on_disk(marks[1][0])
    u.on_deleted(model)
    assert not on_disk(marks[1][0])
    u.close()


def test_a_full_disk_keeps_nothing_more_and_loses_nothing_kept(tmp_path):
    """keep_unknown flooding past the disk (SQLite's page limit stands in for it: the same SQLITE_FULL): the
    flood is refused as StorageFull (507 INSUFFICIENT_STORAGE), the faces kept before all stay, and the
    store works again once there is room. Before, the second ROLLBACK hid the full disk ('no transaction is
    active': 500 INTERNAL)."""
    from app.shared.storage import StorageFull
    u, _, model = make(tmp_path, tenant_max_bytes=0)
    rng = np.random.default_rng(1)

    def flood(n: int) -> list:
        faces = [{"embedding": [float(v) for v in rng.normal(size=128)], "quality": None, "box": None}
                 for _ in range(n)]
        chips = [b"\xff\xd8" + rng.bytes(8000) for _ in range(n)]
        return u.keep(model, "acme", None, {"kind": "predict", "request": "r"}, faces, chips)["faces"]

    kept = flood(3)
    u.db.execute(f"PRAGMA max_page_count = {u.db.execute('PRAGMA page_count').fetchone()[0] + 5}")
    with pytest.raises(StorageFull):
        for _ in range(50):
            kept += flood(5)
    assert u.groups(model, "acme")["faces"] == len(kept) and not u.db.in_transaction
    assert {f["unknown_id"] for f in kept} == {f for c in u.groups(model, "acme")["clusters"] for f in c["faces"]}
    u.db.execute("PRAGMA max_page_count = 1073741823")
    assert len(flood(1)) == 1
    u.close()
