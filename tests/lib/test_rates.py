"""Log-log slopes against exact power laws."""
import numpy as np
import pytest

from resode_tut import loglog_slope

pytestmark = pytest.mark.usefixtures("float64")


def test_loglog_slope():
    x = np.array([2.0, 4.0, 8.0])
    assert loglog_slope(x, 3 * x ** -2.0) == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="positive"):
        loglog_slope(x, [1.0, 0.0, 2.0])
