"""The models' input encoding: what a serving frame becomes, whatever its dtypes."""

import numpy as np
import pandas as pd

from training.models import FrameEncoder


def test_encoder_codes_categories_as_at_fit_and_unseen_values_as_missing():
    fit = pd.DataFrame({"tier": ["gold", "silver", "gold"], "n": [1, 2, 3]})
    later = pd.DataFrame({"n": [5, 6, 7, 8], "tier": ["silver", "platinum", None, "gold"]})
    enc = FrameEncoder().fit(fit)
    out = enc.transform(later)
    assert list(out.columns) == ["tier", "n"]  # the fitted order, not the input's
    assert list(out["tier"].cat.categories) == ["gold", "silver"]
    assert out["tier"].tolist()[0] == "silver" and out["tier"].tolist()[3] == "gold"
    assert out["tier"].isna().tolist() == [False, True, True, False]
    np.testing.assert_array_equal(out["n"].to_numpy(), [5.0, 6.0, 7.0, 8.0])


def test_encoder_turns_dates_into_days_not_categories():
    dates = pd.to_datetime(["2020-01-01", "2020-01-11", None])
    enc = FrameEncoder().fit(pd.DataFrame({"signup": dates}))
    assert enc.categories_ == {}
    later = pd.DataFrame({"signup": pd.to_datetime(["2021-01-01", None]).tz_localize("UTC")})
    days = enc.transform(later)["signup"].to_numpy()
    assert days[0] == (pd.Timestamp("2021-01-01") - pd.Timestamp(0)).days  # 18628
    assert np.isnan(days[1])
