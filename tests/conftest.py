import os

import numpy as np
import pytest

from tvmsep.reference import TOLERANCE, scaled_error


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Every test session compiles into its own cache directory."""
    os.environ["TVMSEP_CACHE_DIR"] = str(tmp_path_factory.mktemp("tvmsep-cache"))
    yield


@pytest.fixture
def rng():
    return np.random.default_rng()


def assert_close(actual, expected, dtype):
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape
    assert np.isfinite(actual).all(), "poisoned output was not overwritten (NaN left)"
    err = scaled_error(actual, expected)
    assert err <= TOLERANCE[dtype], f"max error {err:.3e} of the output's scale > {TOLERANCE[dtype]}"
