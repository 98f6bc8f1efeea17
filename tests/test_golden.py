"""Every golden fixture of every zoo family, on the reference path and on the Triton path (under
the interpreter on a CPU-only machine)."""
import os

import pytest

import backbones
from conftest import GOLDEN
from golden import family_of, fixture_dirs, run_fixture

FIXTURES = fixture_dirs(GOLDEN) if os.path.isdir(GOLDEN) else []


def test_fixtures_found():
    assert FIXTURES, f"no golden fixtures under {GOLDEN}; set BACKBONES_GOLDEN_DIR"


# The Triton path runs under the interpreter on CPU-only machines: ~10-25 s per fixture.
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.slow)])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_golden_fixture(fixture, backend):
    if family_of(fixture) not in backbones.FAMILIES:
        pytest.skip(f"family {family_of(fixture)!r} is not in the zoo yet")
    diffs = run_fixture(GOLDEN, fixture, backend)
    assert diffs  # at least one tensor was compared
