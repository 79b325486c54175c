import os

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Every test session compiles into its own cache directory."""
    os.environ["TVMSEP_CACHE_DIR"] = str(tmp_path_factory.mktemp("tvmsep-cache"))
    yield


@pytest.fixture
def rng():
    return np.random.default_rng()


# TF's test tolerances, relative to the output's scale.
TOLERANCE = {"float16": 4e-2, "float32": 1e-4, "float64": 1e-9}


def assert_close(actual, expected, dtype):
    actual = np.asarray(actual, np.float64)
    scale = max(float(np.abs(expected).max()) if expected.size else 0.0, 1.0)
    assert actual.shape == expected.shape
    assert np.isfinite(actual).all(), "poisoned output was not overwritten (NaN left)"
    err = float(np.abs(actual - expected).max()) if expected.size else 0.0
    assert err <= TOLERANCE[dtype] * scale, f"max error {err:.3e} > {TOLERANCE[dtype]} * {scale:.3g}"
