"""Uploads -> a flat list of labelled photos, refusing unsafe archives.

Labels come from folders: a multipart part named `alice/1.jpg` or a zip entry
`team/alice/1.jpg` both belong to `alice` (the photo's immediate folder).
"""
from __future__ import annotations

import posixpath
import re
import stat
import struct
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from constants import IMAGE_EXTENSIONS
from preprocessor.errors import InputError

# A file name the service stores and shows: no control (C0, C1), line-separator, bidi-override or lone surrogate
# character, at most MAX_FILENAME characters. The one rule the HTTP front and the broker both apply.
_UNSAFE_IN_FILENAME = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
MAX_FILENAME = 1024
# Labels must not deceive: two labels that look the same must be the same label. Refused: control, format
# (Cf: zero-width spaces and joiners, bidi marks, the BOM), surrogate, private-use and line/paragraph
# separator characters, every space but U+0020, and the letters that render as nothing.
_REFUSED_IN_LABEL = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_INVISIBLE_LETTERS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0")
# Variation selectors are nonspacing marks (Mn, not Cf) that render as nothing after a letter: "Tony\ufe0f"
# looks like "Tony". (A label of an emoji with its VS16 is refused with them: names are what labels hold.)
_VARIATION_SELECTORS = re.compile("[\u180b-\u180d\u180f\ufe00-\ufe0f\U000e0100-\U000e01ef]")
SAFE_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Photo:
    """One uploaded photo: who it shows (label), where it came from (filename), its bytes."""
    label: str
    filename: str
    data: bytes


def deceptive_character(text: str) -> str | None:
    """The first character of `text` that a label may not hold (invisible, or a space that looks like
    another), None when there is none."""
    for c in text:
        category = unicodedata.category(c)
        if (category in _REFUSED_IN_LABEL or (category == "Zs" and c != " ") or c in _INVISIBLE_LETTERS
                or _VARIATION_SELECTORS.match(c)):
            return c
    return None


def clean_label(raw: str, max_length: int = 100, *, enrolled: bool = False) -> str:
    """Normalise a person's label (NFC, trimmed of ASCII white space); raise InputError if unusable,
    which includes any invisible or look-alike-space character (`deceptive_character`).
    `enrolled`: the label names someone already in a model (an erasure, a removal), who may have been enrolled
    before those characters were refused: only what labels could never hold (controls, bidi overrides, line
    separators) is refused, so that such a person can still be erased."""
    label = unicodedata.normalize("NFC", raw).strip(" \t\r\n\f\v")
    if enrolled:
        unsafe = _UNSAFE_IN_FILENAME.search(label)
        bad = unsafe.group() if unsafe else None
    else:
        bad = deceptive_character(label)
    if bad is not None:
        raise InputError("BAD_LABEL", f"label {raw!r} contains U+{ord(bad):04X} ({unicodedata.name(bad, 'unnamed')}):"
                         " control, invisible and unusual space characters are not allowed in labels")
    if not label or label in (".", ".."):
        raise InputError("BAD_LABEL", f"empty or reserved label {raw!r}")
    if "/" in label or "\\" in label:
        raise InputError("BAD_LABEL", f"label {raw!r} contains slashes")
    if len(label) > max_length:
        raise InputError("BAD_LABEL", f"label {label[:20]!r}... is longer than {max_length} characters")
    return label


def check_filename(name: str) -> str:
    """A photo's file name as given (a multipart part's or a zip entry's) -> itself, or InputError
    BAD_FILENAME: longer than MAX_FILENAME, or holding a character `_UNSAFE_IN_FILENAME` refuses."""
    if not isinstance(name, str) or len(name) > MAX_FILENAME:
        raise InputError("BAD_FILENAME", f"a file name must be at most {MAX_FILENAME} characters",
                         {"file": str(name)[:200]})
    bad = _UNSAFE_IN_FILENAME.search(name)
    if bad:
        raise InputError("BAD_FILENAME", f"file name {name[:200]!r} holds U+{ord(bad.group()):04X}, a control, "
                         "line-separator or bidi-override character", {"file": name[:200].encode(
                             "utf-8", "backslashreplace").decode()})
    return name


def label_from_path(path: str, max_length: int = 100) -> str:
    """`alice/1.jpg` -> `alice`; `a/b/alice/1.jpg` -> `alice`. Backslashes count as slashes. The path is the
    photo's file name: one the broker would refuse is refused here (BAD_FILENAME, `check_filename`)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if len(parts) < 2:
        raise InputError("MISSING_LABEL",
                         f"{path!r} has no folder: name each photo '<person>/<file>' "
                         "(e.g. filename=alice/1.jpg) or zip one folder per person")
    label = clean_label(parts[-2], max_length)  # a bad folder is a bad label first
    check_filename(path)
    return label


def _unsafe_reason(name: str, info: zipfile.ZipInfo) -> str | None:
    if name.startswith("/") or name.startswith("\\") or _DRIVE.match(name):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "'..' in path"
    if "\x00" in name:
        return "NUL in name"
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_ISLNK(mode):  # 3 = Unix
        return "symbolic link"
    return None


LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a local file header's fixed part (30 bytes)


def _check_layout(fileobj: IO[bytes], zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse an archive whose entries share bytes: a name listed twice, or an entry's local header and
    data running into the next entry (or the central directory). Such archives make a few kilobytes
    declare gigabytes while every entry keeps a modest ratio (duplicate central-directory records of one
    entry, or overlapping entries). Python 3.12's zipfile refuses overlaps when an entry is opened; this
    does the same on 3.11, for every entry, before anything is inflated."""
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InputError("UNSAFE_ARCHIVE", f"archive lists {twice[0]!r} more than once", {"entries": twice[:100]})
    end = zf.start_dir  # where the central directory begins
    for info in sorted(infos, key=lambda i: i.header_offset, reverse=True):
        fileobj.seek(info.header_offset)
        head = fileobj.read(LOCAL_HEADER.size)
        if len(head) < LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
            raise InputError("BAD_ARCHIVE", f"no local header for {info.filename!r}")
        fields = LOCAL_HEADER.unpack(head)
        data_start = info.header_offset + LOCAL_HEADER.size + fields[-2] + fields[-1]
        if data_start + info.compress_size > end:
            raise InputError("UNSAFE_ARCHIVE", f"entry {info.filename!r} overlaps the next one (a zip bomb's "
                             "trick: several entries reading the same bytes)")
        end = info.header_offset


def _check_entries(fileobj: IO[bytes], zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], max_entries: int) -> None:
    """Refuse an archive with too many entries, unsafe ones, or entries sharing bytes (`_check_layout`)."""
    if len(infos) > max_entries:
        raise InputError("ARCHIVE_TOO_LARGE", f"archive has {len(infos)} entries, limit {max_entries}")
    unsafe = [f"{i.filename} ({r})" for i in infos if (r := _unsafe_reason(i.filename, i))]
    if unsafe:
        raise InputError("UNSAFE_ARCHIVE", "archive holds unsafe entries: " + ", ".join(unsafe[:10]),
                         {"entries": unsafe[:100]})
    try:
        _check_layout(fileobj, zf, infos)
    except (OSError, struct.error) as exc:
        raise InputError("BAD_ARCHIVE", f"not a readable zip archive ({exc})") from None


def _skippable(name: str) -> bool:
    """Folders, macOS resource forks and hidden files are not photos and not errors."""
    if name.endswith("/"):
        return True
    parts = name.replace("\\", "/").split("/")
    return parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts if p)


class InflateBudget:
    """Bytes a request may still inflate, shared by all its archive parts (one budget per request)."""

    def __init__(self, total: int):
        self.left = total

    def spend(self, n: int, what: str) -> None:
        self.left -= n
        if self.left < 0:
            raise InputError("ZIP_BOMB", f"{what} inflates the upload past its limit")


def read_zip(fileobj: IO[bytes], *, max_total: int, max_ratio: float, max_entries: int,
             max_label_length: int = 100, budget: InflateBudget | None = None, max_entry: int | None = None,
             keep: Callable[[Photo], bool] | None = None) -> tuple[list[Photo], list[str]]:
    """Read a zip of `<person>/<photo>` entries. Returns (photos, ignored names).

    Refuses (InputError) archives that are corrupt, hold unsafe paths or symlinks,
    list a name twice or entries whose bytes overlap (so that the sizes below are the
    archive's real bytes, not records pointing at the same data), or would inflate
    past `max_total` bytes (or the request's shared `budget`), `max_entry` bytes
    for one entry, or `max_ratio` compression ratio; the sizes are
    enforced while reading, not just trusted from the headers. `keep(photo)` is asked
    right after each entry is inflated: a photo it refuses is not kept in memory.
    """
    budget = budget or InflateBudget(max_total)
    try:
        zf = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError("BAD_ARCHIVE", f"not a readable zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        _check_entries(fileobj, zf, infos, max_entries)
        wanted, ignored = [], []
        for info in infos:
            if _skippable(info.filename):
                continue
            if posixpath.splitext(info.filename.lower())[1] not in IMAGE_EXTENSIONS:
                ignored.append(info.filename)
                continue
            if info.compress_type not in SAFE_COMPRESSION:
                # zipfile inflates bzip2/LZMA a whole input chunk at a time, with no output cap:
                # a lying header would let one read blow up in memory before our size check.
                raise InputError("BAD_ARCHIVE", f"{info.filename!r} uses compression method "
                                 f"{info.compress_type}; only stored and deflate entries are accepted")
            wanted.append(info)
        declared = sum(i.file_size for i in wanted)
        compressed = sum(i.compress_size for i in wanted)
        if declared > min(max_total, budget.left):
            raise InputError("ZIP_BOMB", f"archive would inflate to {declared} bytes, limit "
                             f"{min(max_total, budget.left)}")
        if compressed and declared / compressed > max_ratio:
            raise InputError("ZIP_BOMB", f"archive compression ratio {declared / compressed:.0f} "
                             f"is over the limit of {max_ratio:.0f}")
        too_big = [i.filename for i in wanted if max_entry is not None and i.file_size > max_entry]
        if too_big:
            raise InputError("PHOTO_TOO_LARGE", f"{too_big[0]!r} is over the limit of {max_entry} bytes a photo",
                             {"files": too_big[:100]})
        photos, total = [], 0
        for info in wanted:
            label = label_from_path(info.filename, max_label_length)
            limit = min(info.file_size, max_ratio * max(info.compress_size, 1))
            data = _read_bounded(zf, info, int(limit), min(max_total - total, budget.left))
            total += len(data)
            budget.spend(len(data), repr(info.filename))
            photo = Photo(label, info.filename, data)
            if keep is None or keep(photo):
                photos.append(photo)
    return photos, ignored


def _read_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, budget: int) -> bytes:
    """Read one entry, failing as soon as it inflates past what its header or the budget allow."""
    chunks, size = [], 0
    try:
        with zf.open(info) as fh:
            while chunk := fh.read(1 << 16):
                size += len(chunk)
                if size > limit or size > budget:
                    raise InputError("ZIP_BOMB", f"entry {info.filename!r} inflates past its limit")
                chunks.append(chunk)
    except InputError:
        raise
    except Exception as exc:  # bad CRC, unsupported compression, truncated data
        raise InputError("BAD_ARCHIVE", f"cannot read {info.filename!r} from the archive ({exc})") from None
    return b"".join(chunks)
