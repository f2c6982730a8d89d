"""Feature frames compared column by column, to the tolerance two engines' summation orders allow."""

from __future__ import annotations

import numpy as np
import pandas as pd

RTOL = 1e-9
ATOL = 1e-12  # a share like 1 - x / x may come out 0 or 2e-16 depending on summation order


def assert_columns_close(got: pd.DataFrame, expected: pd.DataFrame, names: list[str]) -> None:
    """Every named column equal to float tolerance, NaN where the other is NaN; names the column."""
    for name in names:
        np.testing.assert_allclose(
            got[name].to_numpy(np.float64),
            expected[name].to_numpy(np.float64),
            rtol=RTOL,
            atol=ATOL,
            equal_nan=True,
            err_msg=name,
        )
