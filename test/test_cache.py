"""The feature cache: bounded (least recently used out first) and erasable by photo digest."""
from __future__ import annotations

import hashlib
import os
import time

from constants import Settings
from features.extract import FeatureCache, PhotoFeatures


def entry(i: int) -> PhotoFeatures:
    return PhotoFeatures(faces=1, box=[0, 0, 1, 1], embedding=[float(i)] * 128)


def test_the_cache_stays_within_its_bound_and_drops_the_least_recently_used(tmp_path):
    probe = FeatureCache(tmp_path / "probe", Settings.from_env(data_dir=tmp_path))
    probe.put("00" * 32, entry(0))
    size = (tmp_path / "probe" / "00" / f"{'00' * 32}.json").stat().st_size
    s = Settings.from_env(data_dir=tmp_path, cache_max_bytes=size * 10)
    cache = FeatureCache(tmp_path / "cache", s)
    photos = [os.urandom(32) for _ in range(30)]
    keys = [cache.key(p) for p in photos]
    for i, key in enumerate(keys[:8]):
        cache.put(key, entry(i))
        os.utime(cache._path(key), (time.time() - 100 + i, time.time() - 100 + i))  # oldest first
    assert cache.get(keys[0]) is not None  # used again: now the most recent
    for i, key in enumerate(keys[8:], start=8):
        cache.put(key, entry(i))
    files = list((tmp_path / "cache").glob("??/*.json"))
    assert sum(f.stat().st_size for f in files) <= size * 10
    assert cache.get(keys[-1]) is not None, "the newest entry stays"
    assert cache.get(keys[1]) is None, "the least recently used went first"


def test_purge_by_photo_digest_and_by_key(tmp_path):
    cache = FeatureCache(tmp_path / "cache", Settings.from_env(data_dir=tmp_path))
    a, b = os.urandom(64), os.urandom(64)
    cache.put(cache.key(a), entry(1))
    cache.put(cache.key(b), entry(2))
    assert cache.purge([hashlib.sha256(a).hexdigest(), "not hex", "ff" * 32]) == 1
    assert cache.get(cache.key(a)) is None and cache.get(cache.key(b)) is not None
    assert cache.purge_keys([cache.key(b)]) == 1
    assert not list((tmp_path / "cache").glob("??/*.json"))


def test_no_cache_when_its_bound_is_zero(tmp_path):
    cache = FeatureCache(tmp_path / "cache", Settings.from_env(data_dir=tmp_path, cache_max_bytes=0))
    cache.put(cache.key(b"x"), entry(1))
    assert cache.get(cache.key(b"x")) is None


def test_each_tenant_has_its_own_entries_so_a_hit_says_nothing_of_another_tenant(tmp_path):
    """Issue #26, row 8: a photo another tenant uploaded is no hit (the cache is keyed by tenant too), and a
    purge by the scoped digest of one tenant leaves the other's entry."""
    from features.extract import scoped_digest
    s = Settings.from_env(data_dir=tmp_path)
    acme, globex = FeatureCache(tmp_path / "cache", s, "acme"), FeatureCache(tmp_path / "cache", s, "globex")
    photo = os.urandom(64)
    acme.put(acme.key(photo), entry(1))
    assert acme.get(acme.key(photo)) is not None
    assert globex.get(globex.key(photo)) is None
    globex.put(globex.key(photo), entry(2))
    digest = hashlib.sha256(photo).hexdigest()
    assert FeatureCache(tmp_path / "cache", s).purge([scoped_digest(digest, "acme")]) == 1
    assert acme.get(acme.key(photo)) is None and globex.get(globex.key(photo)) is not None
    assert scoped_digest(digest, None) == digest  # jobs from before tenants keep their entries
