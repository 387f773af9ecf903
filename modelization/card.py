"""MODEL_CARD.md: what a bundle is, for the people who will use it, written from its manifest.

Who is in it and from how many photos, how it was measured and what it scored, what its
thresholds mean in false accepts, what it is for and not for, the licences of the dlib
models inside its pipeline, and how to build it again. Everything comes from the manifest
(`model_card(manifest)`), so the card never says more than the build measured.
"""
from __future__ import annotations

import html
import re
from importlib import metadata

# What the packages' own metadata says (read at build time; these are the fall-backs when a package
# carries no such field). dlib: Boost Software License 1.0. face_recognition_models 0.3.0: the package
# code is MIT, the model files are Davis King's, released in the public domain / under CC0 1.0.
DLIB_LICENCE = "Boost Software License 1.0"
MODELS_LICENCE = "CC0 1.0 Universal (public domain dedication)"


def licences() -> dict:
    """The licences of dlib and of the model files, from the installed packages' metadata."""
    out = {"dlib": {"package": "dlib-bin", "licence": DLIB_LICENCE},
           "models": {"package": "face_recognition_models", "licence": MODELS_LICENCE}}
    try:
        out["dlib"]["licence"] = metadata.metadata("dlib-bin")["License"] or DLIB_LICENCE
        out["dlib"]["version"] = metadata.version("dlib-bin")
    except metadata.PackageNotFoundError:
        pass
    try:
        dist = metadata.distribution("face_recognition_models")
        out["models"]["version"] = dist.version
        for f in dist.files or []:
            if f.name.upper().startswith("LICENSE"):
                first = (f.read_text() or "").strip().splitlines()
                if first:
                    out["models"]["licence"] = first[0].strip()
                break
    except (metadata.PackageNotFoundError, OSError):
        pass
    return out


# Markdown's inline punctuation (`|` is escaped by _row, in the table); `_` only where it could open or close
# emphasis (not inside a word: George_W_Bush)
_MARKDOWN = re.compile(r"[\\`*{}\[\]()#!~]|(?<![^\W_])_|_(?![^\W_])")


def text(value) -> str:
    """What a client chose (a label, a model's name) as plain text in Markdown and in the HTML a viewer
    renders it to: HTML's special characters as entities, Markdown's punctuation backslash-escaped, one line."""
    escaped = _MARKDOWN.sub(lambda m: "\\" + m.group(), str(value))
    return html.escape(" ".join(escaped.splitlines()), quote=False)


def _pct(value) -> str:
    return "not measured" if value is None else f"{100 * float(value):.2f}%"


def _row(*cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def model_card(manifest: dict, licence: dict | None = None) -> str:
    """The card of a bundle, in Markdown: one section per question a user asks of it."""
    m = manifest
    lines = _title(m) + _who(m) + _how_measured(m) + _thresholds(m) + _intended_use() + \
        _software(m, licence or licences()) + _rebuild(m)
    return "\n".join(lines)


def _title(m: dict) -> list[str]:
    lines = [f"# Model card: {text(m.get('name') or 'unnamed model')} (`{m.get('model_id')}`)", ""]
    lines += [f"Built {m.get('created')} by api-facial-recognition {m.get('service_version')} "
              f"(bundle format {m.get('format_version')}).", ""]
    if m.get("parent"):
        d = m.get("derivation") or {}
        lines += [f"Derived from model `{m['parent']}`: {d.get('inherited_photos', 0)} photos' embeddings reused "
                  f"from it, {d.get('added_photos', 0)} photo(s) added, {d.get('removed_people', 0)} "
                  "person(s) removed. It was measured, calibrated and trained again like any build.", ""]
    return lines


def _who(m: dict) -> list[str]:
    """Who is in it: a row per person with how they were measured."""
    people = [p for p in m.get("people", []) if p.get("in_model")]
    left_out = [p for p in m.get("people", []) if not p.get("in_model")]
    inp = m.get("input") or {}
    lines = ["## Who is in it", "",
             f"{len(people)} people, recognised from {inp.get('usable', '?')} usable photos of "
             f"{inp.get('photos', '?')} given.", "",
             _row("person", "photos given", "photos used", "measured by", "result"), _row("---", "---:", "---:",
                                                                                         "---", "---")]
    for p in people:
        measured = p.get("measured") or {}
        if "test_photos" in measured:
            result = f"{measured['accepted_right']} of {measured['test_photos']} held-out photos accepted by name"
        elif "as_stranger" in measured:
            taken = measured["as_stranger"].get("accepted_as")
            result = "taken for someone else when unknown" if taken else "refused when unknown (as it should)"
        else:
            result = ""
        lines.append(_row(text(p["label"]), p.get("photos"), p.get("used"), p.get("protocol", ""), result))
    if left_out:
        lines += ["", "Left out (no usable photo, or fewer than the minimum): " +
                  ", ".join(f"{text(p['label'])} ({text(p.get('excluded') or 'no usable photo')})"
                            for p in left_out) + "."]
    return lines


def _how_measured(m: dict) -> list[str]:
    """The split, and what the model trained without the test photos scored on them."""
    metrics = m.get("metrics") or {}
    open_set = m.get("open_set") or {}
    verification = m.get("verification") or {}
    split = m.get("split") or {}
    lines = ["", "## How it was measured", "",
             f"The photos were split per person with seed {split.get('seed')} (train {split.get('train')}, "
             f"validation {split.get('validation')}, test {split.get('test')} photos). A model trained without "
             "the test photos was measured on them; the model shipped was then trained again on every usable "
             "photo (it knows one photo more per person than the one measured).", ""]
    if metrics.get("test_photos"):
        lines += [f"- held-out test photos: {metrics['test_photos']}; named right: "
                  f"{_pct(metrics.get('test_accuracy'))} (balanced over people: "
                  f"{_pct(metrics.get('balanced_accuracy'))})",
                  f"- named right and accepted (not taken for a stranger): {_pct(open_set.get('test_dir'))}"]
    else:
        lines.append("- no held-out photos (every person has one photo): nothing was measured by name")
    if metrics.get("one_photo_people"):
        lines.append(f"- people with one photo, shown to the model without them: "
                     f"{metrics['one_photo_people_accepted_as_someone_else']} of {metrics['one_photo_people']} "
                     "taken for someone else")
    if verification.get("measured"):
        v = verification["measured"]
        lines.append(f"- 1:1 verification on the test photos against the others' photos: "
                     f"{_pct(v.get('genuine_accept_rate'))} of same-person pairs accepted, "
                     f"{_pct(v.get('impostor_accept_rate'))} of different-person pairs accepted "
                     f"({v.get('genuine_pairs')} and {v.get('impostor_pairs')} pairs; the people of one gallery "
                     "look more alike than strangers do, so the second figure is pessimistic)")
    return lines


def _thresholds(m: dict) -> list[str]:
    """What the identification and verification thresholds mean in false accepts."""
    open_set = m.get("open_set") or {}
    verification = m.get("verification") or {}
    lines = ["", "## What the thresholds mean", "",
             f"- Identification (`predict`): a face is named only when it is within its person's threshold "
             f"({open_set.get('threshold_range')}); the thresholds are set so that about "
             f"{_pct(open_set.get('target_far'))} of strangers (people not in the model) are taken for "
             "someone in it, whatever the number of people. Otherwise it is \"unknown\"."]
    if verification:
        lines.append(f"- Verification (`verify`): two faces are called the same person when their distance is at "
                     f"most {verification.get('pair_threshold')}; a face is called a given person when it is "
                     f"within that person's verification threshold. Each comparison of two different people "
                     f"passes with a probability of about {_pct(verification.get('far'))}.")
    lines += ["- These rates come from a model of stranger scores fitted on Labeled Faces in the Wild (mostly "
              "press photos of adults). People whose faces the embedding places near many others (look-alikes, "
              "relatives) are mistaken more often; faces unlike LFW's (children, infrared, tiny, strongly turned) "
              "may get other rates. Measure on your own strangers if it matters."]
    return lines


def _intended_use() -> list[str]:
    return ["", "## Intended use and limits", "",
            "- Intended: recognising a small, consenting group (a team, a household, an event's staff) in photos "
            "where faces are fairly frontal and well lit, with a human able to correct mistakes.",
            "- Not intended: identifying people who did not agree to it, surveillance of public spaces, or "
            "decisions with legal or similarly significant effects on a person without human review.",
            "- The model holds an embedding of every usable photo (`gallery.npz`) and every person's name: it is "
            "biometric data about them. Keep it as such; erase a person with the service's "
            "`DELETE /people/<label>`.",
            "- Accuracy differs between groups of people; dlib's ResNet was trained mostly on adult faces from "
            "the web. Photos flagged as poor quality (small, blurred, turned) are recognised less reliably."]


def _software(m: dict, licence: dict) -> list[str]:
    lic_d, lic_m = licence.get("dlib", {}), licence.get("models", {})
    return ["", "## Software and licences", "",
            f"- dlib {lic_d.get('version', '')} (`{lic_d.get('package')}`): {lic_d.get('licence')}; its HOG face "
            "detector is built into dlib.",
            f"- `shape_predictor_5_face_landmarks.dat` and `dlib_face_recognition_resnet_model_v1.dat` "
            f"(`{lic_m.get('package')}` {lic_m.get('version', '')}): Davis King's models, {lic_m.get('licence')} "
            "as published by their author. (dlib's 68-point landmark model, whose training data forbids "
            "commercial use, is not used.)",
            "- The classifier and gallery in this bundle were trained by this service on the photos above.",
            "- Versions: " + ", ".join(f"{k} {v}" for k, v in (m.get("software") or {}).items())]


def _detector_line(pipeline: dict) -> str:
    """The detector's settings as the manifest's `pipeline` records them (FR_DETECTOR=blazeface has its own)."""
    if "detect_min_face_px" in pipeline:
        return f"detector blazeface, smallest face {pipeline.get('detect_min_face_px')} px"
    return (f"detector hog, detect max side {pipeline.get('detect_max_side')}, upsample max side "
            f"{pipeline.get('upsample_max_side')}")


def _rebuild(m: dict) -> list[str]:
    """The seed and settings that build the same model from the same photos."""
    split = m.get("split") or {}
    open_set = m.get("open_set") or {}
    verification = m.get("verification") or {}
    pipeline = m.get("pipeline") or {}
    network = m.get("network") or {}
    return ["", "## How to rebuild it", "",
            f"Service version {m.get('service_version')}, seed {split.get('seed')}. Upload the same photos "
            f"(same labels) with `seed={split.get('seed')}` and the same settings:", "",
            f"- split: test fraction {split.get('test_fraction')}, validation fraction "
            f"{split.get('validation_fraction')}; quality policy {(m.get('quality') or {}).get('policy')}",
            f"- pipeline: {_detector_line(pipeline)}, chip {pipeline.get('chip_size')} px, padding "
            f"{pipeline.get('chip_padding')}, pipeline version {pipeline.get('pipeline_version')}",
            f"- network: {network.get('params')} parameters, learning rate {network.get('learning_rate')}, "
            f"batch {network.get('batch_size')}, {(m.get('training') or {}).get('epochs')} epochs kept"
            + ("; chosen by the genetic search (optimize=1)" if (m.get("optimization") or {}).get("chosen")
               else ""),
            f"- open set: target false-accept rate {open_set.get('target_far')} (FR_TARGET_FAR)"
            + (f"; verification {verification.get('far')} (FR_VERIFY_FAR)" if verification else ""),
            "", "The full record is `manifest.json` beside this card.", ""]
