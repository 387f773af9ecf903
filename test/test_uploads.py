"""Label parsing and zip safety of `preprocessor.uploads`."""
from __future__ import annotations

import io
import stat
import struct
import tracemalloc
import unicodedata
import warnings
import zipfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from preprocessor.errors import InputError
from preprocessor.uploads import check_filename, clean_label, deceptive_character, label_from_path, read_zip
from test.conftest import pick_people

LIMITS = dict(max_total=100 * 1024 * 1024, max_ratio=200.0, max_entries=1000)


def make_zip(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """entries: iterable of (name or ZipInfo, bytes)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(buf, "w", compression=compression) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return buf.getvalue()


def code_of(excinfo) -> str:
    return excinfo.value.code


# --------------------------------------------------------------------------- labels

@pytest.mark.parametrize("path, label", [
    ("alice/1.jpg", "alice"),
    ("team/alice/1.jpg", "alice"),
    ("a/b/c/bob/photo.png", "bob"),
    ("alice\\1.jpg", "alice"),
    ("team\\alice\\1.jpg", "alice"),
    ("team/alice\\1.jpg", "alice"),
    ("./alice/1.jpg", "alice"),
    ("alice/./1.jpg", "alice"),
    ("alice//1.jpg", "alice"),
    ("  Alice Smith  /1.jpg", "Alice Smith"),
    ("Jos\u0065\u0301/1.jpg", "Jos\u00e9"),        # decomposed e + acute -> NFC é
    ("\u674e\u5c0f\u9f99/1.jpg", "\u674e\u5c0f\u9f99"),
])
def test_label_from_path_examples(path, label):
    assert label_from_path(path) == label


@pytest.mark.parametrize("path", ["1.jpg", "", "/", "./1.jpg", "/1.jpg", "\\1.jpg", "alice/", "alice/."])
def test_label_from_path_without_folder_is_missing_label(path):
    with pytest.raises(InputError) as e:
        label_from_path(path)
    assert code_of(e) == "MISSING_LABEL"


@pytest.mark.parametrize("path", ["../1.jpg", "a/../1.jpg", "  ../1.jpg", " . /1.jpg",
                                  "al\x00ice/1.jpg", "al\nice/1.jpg", "al\x7fice/1.jpg", "   /1.jpg"])
def test_label_from_path_bad_folder_is_bad_label(path):
    with pytest.raises(InputError) as e:
        label_from_path(path)
    assert code_of(e) == "BAD_LABEL"


def test_label_length_limit():
    assert label_from_path("a" * 100 + "/1.jpg") == "a" * 100
    with pytest.raises(InputError) as e:
        label_from_path("a" * 101 + "/1.jpg")
    assert code_of(e) == "BAD_LABEL"
    assert label_from_path("abc/1.jpg", max_length=3) == "abc"
    with pytest.raises(InputError):
        label_from_path("abcd/1.jpg", max_length=3)


@pytest.mark.parametrize("raw", ["", "   ", ".", "..", " .. ", "a/b", "a\\b", "a\tb", "a\x00b", "a\x1bb"])
def test_clean_label_rejects(raw):
    with pytest.raises(InputError) as e:
        clean_label(raw)
    assert code_of(e) == "BAD_LABEL"


def test_clean_label_trims_and_normalises():
    assert clean_label("  bob \n") == "bob"
    assert clean_label("Zo\u0065\u0308") == "Zo\u00eb"
    assert clean_label("Zo\u00eb") == clean_label("Zo\u0065\u0308")


# Safe path components: no slashes, no C0/DEL controls, no surrogates.
component = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Co", "Zl", "Zp", "Zs"),
                           blacklist_characters="/\\" + "".join(map(chr, range(32)))
                           + "".join(map(chr, range(0x7f, 0xa0)))
                           + "\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"),
    min_size=1, max_size=30)


def _usable_folder(folder: str) -> bool:
    norm = unicodedata.normalize("NFC", folder).strip()
    if deceptive_character(norm):  # e.g. U+3164 (a letter that renders as nothing)
        return False
    return norm not in ("", ".", "..") and len(norm) <= 100


@given(folder=component, file=component)
def test_label_is_nfc_stripped_folder(folder, file):
    assume(_usable_folder(folder) and file != ".")
    expected = unicodedata.normalize("NFC", folder).strip()
    assert label_from_path(f"{folder}/{file}") == expected
    assert label_from_path(f"{folder}\\{file}") == expected


@given(outer=st.lists(component, min_size=1, max_size=3), folder=component, file=component)
def test_nested_paths_take_immediate_folder(outer, folder, file):
    assume(_usable_folder(folder) and file != ".")
    expected = unicodedata.normalize("NFC", folder).strip()
    assert label_from_path("/".join(outer + [folder, file])) == expected
    assert label_from_path("\\".join(outer + [folder, file])) == expected


@given(file=component)
def test_bare_filename_is_missing_label(file):
    with pytest.raises(InputError) as e:
        label_from_path(file)
    assert code_of(e) == "MISSING_LABEL"


@given(left=component, right=component, ctrl=st.sampled_from([chr(c) for c in range(32)] + ["\x7f"]))
def test_interior_control_chars_are_bad_labels(left, right, ctrl):
    with pytest.raises(InputError) as e:
        clean_label(f"x{left}{ctrl}{right}x")
    assert code_of(e) == "BAD_LABEL"


@given(pad=st.sampled_from(["", " ", "  ", "\t", " \u3000"]), file=component)
def test_dotdot_folder_is_bad_label(pad, file):
    assume(file != ".")
    with pytest.raises(InputError) as e:
        label_from_path(f"{pad}..{pad}/{file}")
    assert code_of(e) == "BAD_LABEL"


# --------------------------------------------------------------------------- zips: good input

@pytest.fixture(scope="module")
def two_people(faces_dir):
    return pick_people(faces_dir, 2, 2)


def test_good_zip_gives_labels_and_bytes(two_people):
    entries = []
    for person, photos in two_people.items():
        for p in photos:
            entries.append((f"upload/{person}/{p.name}", p.read_bytes()))
    photos, ignored = read_zip(io.BytesIO(make_zip(entries)), **LIMITS)
    assert ignored == []
    assert len(photos) == 4
    got = {(ph.label, ph.filename): ph.data for ph in photos}
    want = {(name.split("/")[1], name): data for name, data in entries}
    assert got == want
    assert {ph.label for ph in photos} == set(two_people)


def test_stored_zip_also_works(two_people):
    person, photos = next(iter(two_people.items()))
    data = photos[0].read_bytes()
    got, _ = read_zip(io.BytesIO(make_zip([(f"{person}/a.JPG", data)], zipfile.ZIP_STORED)), **LIMITS)
    assert [(p.label, p.data) for p in got] == [(person, data)]


def test_macosx_dotfiles_and_dirs_are_skipped_silently(two_people):
    person, photos = next(iter(two_people.items()))
    data = photos[0].read_bytes()
    entries = [
        (f"{person}/", b""),
        (f"{person}/1.jpg", data),
        (f"__MACOSX/{person}/._1.jpg", b"\x00\x05\x16\x07resource fork"),
        (f"__MACOSX/{person}/1.jpg", b"not a dotfile, still macOS junk"),
        (f"{person}/.DS_Store", b"junk"),
        (f"{person}/._1.jpg", b"junk"),
        (f".hidden/{person}/2.jpg", b"junk"),
        (f"{person}/notes.txt", b"hello"),
        (f"{person}/README", b"hello"),
        ("manifest.json", b"{}"),
    ]
    photos_out, ignored = read_zip(io.BytesIO(make_zip(entries)), **LIMITS)
    assert [(p.label, p.filename, p.data) for p in photos_out] == [(person, f"{person}/1.jpg", data)]
    assert sorted(ignored) == sorted([f"{person}/notes.txt", f"{person}/README", "manifest.json"])


def test_all_image_extensions_accepted_case_insensitively():
    from constants import IMAGE_EXTENSIONS
    entries = [(f"p/x{i}{ext.upper() if i % 2 else ext}", b"d") for i, ext in enumerate(IMAGE_EXTENSIONS)]
    photos, ignored = read_zip(io.BytesIO(make_zip(entries)), **LIMITS)
    assert ignored == [] and len(photos) == len(IMAGE_EXTENSIONS)


def test_photo_at_zip_root_is_missing_label():
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(make_zip([("1.jpg", b"x")])), **LIMITS)
    assert code_of(e) == "MISSING_LABEL"


# --------------------------------------------------------------------------- zips: unsafe

@pytest.mark.parametrize("name", [
    "../evil.jpg",
    "alice/../../evil.jpg",
    "alice/..",
    "..\\evil.jpg",
    "alice\\..\\..\\evil.jpg",
    "/etc/x.jpg",
    "/alice/x.jpg",
    "\\alice\\x.jpg",
    "C:\\x.jpg",
    "C:/x.jpg",
    "c:x.jpg",
])
def test_unsafe_names_are_refused(name):
    data = make_zip([("alice/ok.jpg", b"fine"), (name, b"bad")])
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(data), **LIMITS)
    assert code_of(e) == "UNSAFE_ARCHIVE"
    assert name in e.value.message


def test_unsafe_entries_refused_even_if_not_images():
    """A `../` entry poisons the archive even if it would be ignored (.txt) or skipped (dotfile)."""
    for name in ("../notes.txt", "../.bashrc", "__MACOSX/../../x"):
        with pytest.raises(InputError) as e:
            read_zip(io.BytesIO(make_zip([("alice/1.jpg", b"x"), (name, b"bad")])), **LIMITS)
        assert code_of(e) == "UNSAFE_ARCHIVE"


def _symlink(name: str, target: bytes = b"/etc/passwd"):
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target


def test_symlink_entry_is_refused():
    data = make_zip([("alice/1.jpg", b"x"), _symlink("alice/2.jpg")])
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(data), **LIMITS)
    assert code_of(e) == "UNSAFE_ARCHIVE"
    assert "symbolic link" in e.value.message


def test_regular_unix_file_mode_is_not_a_symlink():
    info = zipfile.ZipInfo("alice/1.jpg")
    info.create_system = 3
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    photos, _ = read_zip(io.BytesIO(make_zip([(info, b"data")])), **LIMITS)
    assert [p.data for p in photos] == [b"data"]


# --------------------------------------------------------------------------- zips: bombs and garbage

@pytest.fixture(scope="module")
def zeros_zip() -> bytes:
    """One 50 MB entry of zeros: deflates ~1000:1."""
    return make_zip([("alice/1.jpg", bytes(50_000_000))])


def test_zip_bomb_over_ratio(zeros_zip):
    assert len(zeros_zip) < 200_000  # the premise: ~1000:1
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(zeros_zip), max_total=10**10, max_ratio=200, max_entries=10)
    assert code_of(e) == "ZIP_BOMB"
    assert "ratio" in e.value.message


def test_zip_bomb_over_total(zeros_zip):
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(zeros_zip), max_total=10_000_000, max_ratio=10**6, max_entries=10)
    assert code_of(e) == "ZIP_BOMB"
    # the same archive passes with limits above it (so the limits are what refused it)
    photos, _ = read_zip(io.BytesIO(zeros_zip), max_total=60_000_000, max_ratio=10**6, max_entries=10)
    assert len(photos[0].data) == 50_000_000


def test_total_limit_sums_entries():
    import os
    blobs = [os.urandom(300_000) for _ in range(4)]  # incompressible: ratio ~1
    data = make_zip([(f"p/{i}.jpg", b) for i, b in enumerate(blobs)])
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(data), max_total=1_000_000, max_ratio=200, max_entries=10)
    assert code_of(e) == "ZIP_BOMB"
    photos, _ = read_zip(io.BytesIO(data), max_total=1_200_000, max_ratio=200, max_entries=10)
    assert [p.data for p in photos] == blobs


def test_too_many_entries():
    data = make_zip([(f"p/{i}.jpg", b"x") for i in range(6)])
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(data), max_total=10**6, max_ratio=200, max_entries=5)
    assert code_of(e) == "ARCHIVE_TOO_LARGE"
    photos, _ = read_zip(io.BytesIO(data), max_total=10**6, max_ratio=200, max_entries=6)
    assert len(photos) == 6


@pytest.mark.parametrize("garbage", [b"", b"not a zip at all", b"PK\x03\x04" + b"\x00" * 40, bytes(range(256)) * 4])
def test_garbage_is_bad_archive(garbage):
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(garbage), **LIMITS)
    assert code_of(e) == "BAD_ARCHIVE"


def test_truncated_zip_is_bad_archive(two_people):
    person, photos = next(iter(two_people.items()))
    data = make_zip([(f"{person}/{p.name}", p.read_bytes()) for p in photos])
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(data[: len(data) // 2]), **LIMITS)
    assert code_of(e) == "BAD_ARCHIVE"


def test_corrupt_entry_data_is_bad_archive(two_people):
    person, photos = next(iter(two_people.items()))
    payload = photos[0].read_bytes()
    data = bytearray(make_zip([(f"{person}/1.jpg", payload)], zipfile.ZIP_STORED))
    start = data.index(payload[:64])
    data[start + 1000] ^= 0xFF  # flip one byte of the stored photo: CRC mismatch
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(bytes(data)), **LIMITS)
    assert code_of(e) == "BAD_ARCHIVE"


def _lie_about_size(data: bytes, claimed: int, crc: int | None = None) -> bytes:
    """Patch the uncompressed size (and optionally the CRC) of the single entry, in both headers."""
    raw = bytearray(data)
    assert raw[:4] == b"PK\x03\x04"
    struct.pack_into("<I", raw, 22, claimed)             # local header: uncompressed size
    cd = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, claimed)        # central directory: uncompressed size
    if crc is not None:
        struct.pack_into("<I", raw, 14, crc)
        struct.pack_into("<I", raw, cd + 16, crc)
    return bytes(raw)


@pytest.mark.parametrize("fix_crc", [False, True])
def test_lying_header_is_still_stopped(zeros_zip, fix_crc):
    """The header claims 1000 bytes for 50 MB of zeros: the declared-size checks pass, the read must not."""
    import zlib
    claimed = 1000
    lying = _lie_about_size(zeros_zip, claimed, zlib.crc32(bytes(claimed)) if fix_crc else None)
    assert zipfile.ZipFile(io.BytesIO(lying)).infolist()[0].file_size == claimed
    tracemalloc.start()
    try:
        try:
            photos, _ = read_zip(io.BytesIO(lying), max_total=10_000_000, max_ratio=200, max_entries=10)
        except InputError as exc:
            assert exc.code in ("ZIP_BOMB", "BAD_ARCHIVE")
        else:
            assert all(len(p.data) <= claimed for p in photos)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"inflated {peak} bytes in memory"


def test_bzip2_entries_are_refused_outright():
    data = make_zip([("alice/1.jpg", bytes(20_000_000))], zipfile.ZIP_BZIP2)
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(data), max_total=10**10, max_ratio=200, max_entries=10)
    assert code_of(e) == "BAD_ARCHIVE" and "compression" in e.value.message


# zipfile inflates bzip2/LZMA a whole compressed chunk at a time: such entries are refused
# before any inflating, so a lying header can't make a bomb go off in memory.
@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_lying_header_bzip2_bomb_is_stopped_before_inflating(method):
    lying = _lie_about_size(make_zip([("alice/1.jpg", bytes(20_000_000))], method), 1000)
    tracemalloc.start()
    try:
        with pytest.raises(InputError):
            read_zip(io.BytesIO(lying), max_total=10_000_000, max_ratio=200, max_entries=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"inflated {peak} bytes in memory"


# --------------------------------------------------------------------------- zips: arbitrary names

names = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.builds(
        lambda parts, seps, ext: "".join(p + s for p, s in zip(parts, seps)) + ext,
        st.lists(st.one_of(st.sampled_from(["..", ".", "", "__MACOSX", ".hidden", "C:", " .. ", "alice", "\x00",
                                            "a\nb", "\u00e9", "e\u0301", " "]),
                           st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)),
                 min_size=1, max_size=4),
        st.lists(st.sampled_from(["/", "\\", "//"]), min_size=4, max_size=4),
        st.sampled_from([".jpg", ".PNG", ".txt", "", "/", "x.jpeg"]),
    ),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(entry_names=st.lists(names, min_size=1, max_size=5))
def test_arbitrary_names_never_escape(entry_names):
    # zipfile itself cannot write an empty name (or one that is empty once cut at its first NUL)
    entry_names = [n for n in entry_names if zipfile.ZipInfo(n).filename]
    assume(entry_names)
    data = make_zip([(n, n.encode("utf-8", "surrogatepass")) for n in entry_names])
    try:
        photos, ignored = read_zip(io.BytesIO(data), **LIMITS)
    except InputError as exc:
        assert exc.code in ("MISSING_LABEL", "BAD_LABEL", "BAD_FILENAME", "UNSAFE_ARCHIVE", "BAD_ARCHIVE")
        return
    for p in photos:
        assert check_filename(p.filename) == p.filename  # the broker takes every name the front kept
        assert p.label and "/" not in p.label and "\\" not in p.label
        assert p.label not in (".", "..")
        assert not any(ord(c) < 32 or c == "\x7f" for c in p.label)
        assert not p.filename.startswith(("/", "\\"))
        assert ".." not in p.filename.replace("\\", "/").split("/")
        assert p.label == label_from_path(p.filename)
    returned = {p.filename for p in photos} | set(ignored)
    assert len(photos) + len(ignored) <= len(entry_names)
    assert all(not n.endswith("/") for n in returned)


@settings(max_examples=100)
@given(people=st.dictionaries(component, st.lists(st.binary(max_size=200), min_size=1, max_size=3),
                              min_size=1, max_size=4))
def test_safe_zips_round_trip(people):
    """Any safe `<person>/<n>.jpg` layout comes back with every photo, label and byte."""
    people = {k: v for k, v in people.items() if _usable_folder(k) and not k.startswith(".")
              and k != "__MACOSX" and not (len(k) >= 2 and k[1] == ":")}
    assume(people)
    entries = [(f"{folder}/{i}.jpg", blob) for folder, blobs in people.items() for i, blob in enumerate(blobs)]
    photos, ignored = read_zip(io.BytesIO(make_zip(entries)), **LIMITS)
    assert ignored == []
    assert [(p.filename, p.data) for p in photos] == entries
    assert [p.label for p in photos] == [unicodedata.normalize("NFC", n.split("/")[0]).strip() for n, _ in entries]


@pytest.mark.parametrize("raw", ["a\x85b", "a\u202eb", "a\u2028b", "\x1falice", "alice\x1f", "a\x9fb"])
def test_c1_controls_bidi_overrides_and_edge_controls_are_refused(raw):
    with pytest.raises(InputError) as e:
        clean_label(raw)
    assert e.value.code == "BAD_LABEL"


def test_mpo_photos_are_accepted_like_jpeg(faces_dir):
    from PIL import Image

    from preprocessor.images import decode_image, inspect_image
    path = next((faces_dir / "lfw62").glob("*/*.jpg"))
    with Image.open(path) as im:
        buf = io.BytesIO()
        im.save(buf, "MPO", save_all=True, append_images=[im.rotate(90)])
    assert inspect_image(buf.getvalue(), 10**7) == ("MPO", 250, 250)
    assert decode_image(buf.getvalue(), 10**7).shape == (250, 250, 3)


# --------------------------------------------------------------------------- labels that cannot deceive (issue #26)

@pytest.mark.parametrize("raw", ["alice\u200b", "al\u200dice", "Tony\u200e\u200d", "\ufeffalice", "a\u00a0b",
                                 "alice\u00a0", "a\u2003b", "a\u3000b", "a\u202fb", "a\u3164", "\u2800", "a\ue000b",
                                 "a\u2061b", "a\u00adb"])
def test_invisible_and_look_alike_space_characters_are_bad_labels(raw):
    """"alice" and "alice\u200b" look the same in the console; an erasure of one would miss the other."""
    with pytest.raises(InputError) as e:
        clean_label(raw)
    assert code_of(e) == "BAD_LABEL" and "U+" in e.value.message


@given(st.text(alphabet=st.characters(whitelist_categories=("Cf",)), min_size=1, max_size=3),
       st.sampled_from(["", "x", "al"]))
def test_any_format_character_anywhere_is_a_bad_label(cf, tail):
    with pytest.raises(InputError) as e:
        clean_label(f"alice{cf}{tail}")
    assert code_of(e) == "BAD_LABEL"


@given(st.text(max_size=40))
def test_a_clean_label_is_nfc_and_clean_again(raw):
    """What clean_label returns is NFC and unchanged by cleaning again (the broker's check_label relies on it)."""
    try:
        label = clean_label(raw)
    except InputError:
        return
    assert label == unicodedata.normalize("NFC", label) == clean_label(label)
    assert deceptive_character(label) is None



@pytest.mark.parametrize("raw", ["alice\u200b", "a\u00a0b", "Tony\ufe0f", "\ufeffalice", "a\u3164"])
def test_an_enrolled_label_with_invisible_characters_is_still_found(raw):
    """A person enrolled before invisible characters were refused is named as enrolled (erasure, removal, verify),
    exactly; what no label could ever hold stays refused."""
    assert clean_label(raw, enrolled=True) == raw == clean_label(clean_label(raw, enrolled=True), enrolled=True)
    for bad in (raw + "\x01", raw + "\u202e", "a/" + raw, "", "..", "x" * 101):
        with pytest.raises(InputError) as e:
            clean_label(bad, enrolled=True)
        assert code_of(e) == "BAD_LABEL"

def test_a_zip_whose_folders_differ_by_invisible_characters_is_refused():
    """`Tony\u200e\u200d/` and `Tony/` would build two people who look like one."""
    data = make_zip([("Tony/1.jpg", b"a"), ("Tony\u200e\u200d/2.jpg", b"b")])
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(data), **LIMITS)
    assert code_of(e) == "BAD_LABEL"



@pytest.mark.parametrize("raw", ["Tony\ufe0f", "To\ufe00ny", "Tony\U000e0100", "Tony\u180b", "\ufe0e"])
def test_variation_selectors_are_bad_labels(raw):
    """A variation selector (a nonspacing mark, not Cf) renders as nothing after a letter: "Tony\ufe0f" looks
    like "Tony", and a zip with both folders built two people who look like one."""
    with pytest.raises(InputError) as e:
        clean_label(raw)
    assert code_of(e) == "BAD_LABEL" and "U+" in e.value.message
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(make_zip([("Tony/1.jpg", b"a"), (f"{raw}/2.jpg", b"b")])), **LIMITS)
    assert code_of(e) == "BAD_LABEL"

# ------------------------------------------------------------------- file names: the broker's rule, at the front

@pytest.mark.parametrize("name", ["a/b\x01.jpg", "a/b\n.jpg", "a/b\x7f.jpg", "a/b\x85.jpg", "a/b\u202e.jpg",
                                  "a/\udc80.jpg", "a/" + "x" * 1023 + ".jpg"])
def test_file_names_the_broker_refuses_are_bad_filenames(name):
    with pytest.raises(InputError) as e:
        label_from_path(name)
    assert code_of(e) == "BAD_FILENAME"
    with pytest.raises(InputError):
        check_filename(name)


def test_a_zip_entry_with_a_control_character_is_a_bad_filename():
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(make_zip([("bob/1\x1b[31m.jpg", b"a"), ("alice/1.jpg", b"b")])), **LIMITS)
    assert code_of(e) == "BAD_FILENAME"


# --------------------------------------------------------------------------- zips: entries sharing bytes (issue #26)

def repeat_records(raw: bytes, copies: int) -> bytes:
    """`raw` (a zip) with every central-directory record listed `copies` times: each copy points at the same
    local entry, so the archive declares `copies` times the bytes it holds (issue #26, row 4)."""
    eocd = raw.rfind(b"PK\x05\x06")
    _, cd_size, cd_off = struct.unpack("<HIL", raw[eocd + 10:eocd + 20])
    cd, records, i = raw[cd_off:cd_off + cd_size], [], 0
    while i < len(cd):
        n, e, c = struct.unpack("<HHH", cd[i + 28:i + 34])
        records.append(cd[i:i + 46 + n + e + c])
        i += 46 + n + e + c
    new_cd = b"".join(r for r in records for _ in range(copies))
    end = raw[eocd:eocd + 8] + struct.pack("<HHIL", len(records) * copies, len(records) * copies, len(new_cd),
                                           cd_off) + raw[eocd + 20:]
    return raw[:cd_off] + new_cd + end


def test_records_repeated_in_the_central_directory_are_refused():
    """30 records over 2 entries of 1 MB each: every entry's ratio is modest, the archive's 15 times what
    it holds. Refused before anything is inflated, as Python 3.12's zipfile refuses the overlap."""
    raw = make_zip([("alice/1.jpg", bytes(1_000_000)), ("bob/1.jpg", bytes(1_000_000))])
    bomb = repeat_records(raw, 15)
    assert len(zipfile.ZipFile(io.BytesIO(bomb)).infolist()) == 30  # the premise: zipfile lists all 30
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as e:
            read_zip(io.BytesIO(bomb), max_total=10**9, max_ratio=2000, max_entries=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code_of(e) == "UNSAFE_ARCHIVE" and "more than once" in e.value.message
    assert peak < 1_000_000  # refused before one entry was inflated
    assert len(read_zip(io.BytesIO(raw), max_total=10**9, max_ratio=2000, max_entries=100)[0]) == 2


def test_entries_whose_data_overlap_are_refused():
    """An entry whose compressed size runs over the next entry's local header (the overlapping zip bomb):
    refused as unsafe, not read."""
    raw = bytearray(make_zip([("alice/1.jpg", bytes(10_000)), ("bob/1.jpg", bytes(10_000))],
                             zipfile.ZIP_STORED))
    cd_off = struct.unpack("<L", raw[raw.rfind(b"PK\x05\x06") + 16:][:4])[0]
    assert raw[cd_off:cd_off + 4] == b"PK\x01\x02"
    raw[cd_off + 20:cd_off + 24] = struct.pack("<L", 10_000 + 30 + len("bob/1.jpg") + 10)  # alice's size
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(bytes(raw)), **LIMITS)
    assert code_of(e) == "UNSAFE_ARCHIVE" and "overlaps" in e.value.message


def test_a_name_listed_twice_is_refused():
    with pytest.raises(InputError) as e:
        read_zip(io.BytesIO(make_zip([("alice/1.jpg", b"a"), ("alice/1.jpg", b"b"), ("bob/1.jpg", b"c")])),
                 **LIMITS)
    assert code_of(e) == "UNSAFE_ARCHIVE"
