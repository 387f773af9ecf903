"""Request parsing of the HTTP front: ids, form options (hypothesis where it pays)."""
from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from app.web.errors import ApiError
from app.web.forms import parse_job_id, parse_options
from constants import MAX_SEED, Settings

SETTINGS = Settings.from_env()


@given(st.uuids(version=4))
def test_any_uuid4_is_accepted_in_canonical_form(u):
    assert parse_job_id(str(u)) == str(u)
    assert parse_job_id(str(u).upper()) == str(u)
    assert parse_job_id(f"  {u} ") == str(u)


@given(st.text(max_size=60))
def test_anything_else_is_bad_id(raw):
    try:
        value = parse_job_id(raw)
    except ApiError as exc:
        assert exc.http_status == 400 and exc.code == "BAD_ID"
    else:
        assert uuid.UUID(value).version == 4


@pytest.mark.parametrize("raw", [pytest.param(str(uuid.uuid1()), id="uuid1"), "../" * 10, "", None, "0" * 36])
def test_bad_ids(raw):
    with pytest.raises(ApiError) as e:
        parse_job_id(raw)
    assert e.value.code == "BAD_ID"


def test_default_options():
    name, opts = parse_options(MultiDict(), SETTINGS)
    assert name is None and opts == {"optimize": False, "seed": SETTINGS.default_seed}


@given(st.integers(0, MAX_SEED), st.sampled_from(["1", "true", "yes", "0", "false", "no"]))
def test_valid_seed_and_optimize(seed, flag):
    _, opts = parse_options(MultiDict({"seed": str(seed), "optimize": flag}), SETTINGS)
    optimize = flag in ("1", "true", "yes")
    assert {k: opts[k] for k in ("seed", "optimize")} == {"seed": seed, "optimize": optimize}
    # an optimized build carries the search's controls, with their defaults
    search = {"population": SETTINGS.search_population, "generations": SETTINGS.search_generations,
              "time_budget": SETTINGS.search_budget_s}
    assert {k: v for k, v in opts.items() if k in search} == (search if optimize else {})


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_SEED + 1)))
def test_out_of_range_seed(seed):
    with pytest.raises(ApiError) as e:
        parse_options(MultiDict({"seed": str(seed)}), SETTINGS)
    assert e.value.code == "BAD_PARAMETER"


def test_name_is_trimmed_and_bounded():
    assert parse_options(MultiDict({"name": "  office  "}), SETTINGS)[0] == "office"
    for bad in ("x" * (SETTINGS.max_name_length + 1), "a\nb"):
        with pytest.raises(ApiError):
            parse_options(MultiDict({"name": bad}), SETTINGS)
