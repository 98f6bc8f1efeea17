"""Every golden fixture of every zoo family, on the reference path and on the Triton path (under
the interpreter on a CPU-only machine). Fixtures of families still to be built (their folders came
with the shared fixture set) are not collected; a test pins that list so none is forgotten."""
import os

import pytest

import backbones
from conftest import GOLDEN
from golden import family_of, fixture_dirs, run_fixture

ALL_FIXTURES = fixture_dirs(GOLDEN) if os.path.isdir(GOLDEN) else []
FIXTURES = [f for f in ALL_FIXTURES if family_of(f) in backbones.FAMILIES]
# Families whose fixtures are in tests/golden ahead of their code (none: all nine are built).
PLANNED_FAMILIES = set()


def test_fixtures_found():
    """Every family with official code has fixtures made by running it; a family without official
    code (HaloNet: timm's models are the reference, compared in its own tests) has none."""
    assert FIXTURES, f"no golden fixtures under {GOLDEN}; set BACKBONES_GOLDEN_DIR"
    with_official_code = {name for name, record in backbones.FAMILIES.items() if record.official_repo}
    assert {family_of(f) for f in FIXTURES} == with_official_code
    for name in set(backbones.FAMILIES) - with_official_code:
        assert backbones.FAMILIES[name].timm_equivalents, f"{name}: no official code and no timm reference"


def test_every_fixture_belongs_to_a_family():
    pending = {family_of(f) for f in ALL_FIXTURES} - set(backbones.FAMILIES)
    assert pending <= PLANNED_FAMILIES, f"fixtures of no family, built or planned: {pending - PLANNED_FAMILIES}"
    assert not PLANNED_FAMILIES & set(backbones.FAMILIES), "a planned family is built: drop it here"


# The Triton path runs under the interpreter on CPU-only machines: ~10-25 s per fixture.
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.slow)])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_golden_fixture(fixture, backend):
    diffs = run_fixture(GOLDEN, fixture, backend)
    assert diffs  # at least one tensor was compared
