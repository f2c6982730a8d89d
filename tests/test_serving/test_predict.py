"""`nba predict`'s scores are the numbers a decision reads (issue #27, item 2)."""

import numpy as np
import pandas as pd
import pytest

from features.config import DataConfig
from serving.catalogue import load_catalogue
from serving.config import PolicyConfig
from serving.policy import DecisionPolicy
from serving.predict import CHUNK_ROWS, predict_customers, probe_actions, write_parquet_atomic


@pytest.fixture(scope="module")
def scored(trained_world):
    catalogue, _ = load_catalogue()
    feats = trained_world.features
    steps: list[int] = []
    table = predict_customers(
        trained_world.result.bundle, feats, DataConfig(), catalogue, step=steps.append
    )
    return table, catalogue, steps


def test_one_row_a_customer_with_every_score_the_bundle_has(trained_world, scored):
    table, catalogue, steps = scored
    feats = trained_world.features
    assert table["customer_id"].tolist() == feats["customer_id"].tolist()
    assert sum(steps) == len(feats) and len(steps) == -(-len(feats) // CHUNK_ROWS)
    outbound = DataConfig().outbound_channels
    assert [c for c in table.columns if c.startswith("p_response_")] == [
        f"p_response_{c}" for c in outbound
    ]
    assert {f"uplift_{a}" for a in catalogue.ids} <= set(table.columns)
    for c in ["p_purchase", *(f"p_response_{c}" for c in outbound)]:
        assert table[c].between(0, 1).all(), c
    assert np.allclose(table["expected_value"], table["p_purchase"] * table["spend_if_purchase"])


def test_the_scores_equal_the_decisions_components(trained_world, scored):
    """Uplift per action and P(response) per channel equal what the policy computed for the
    same customers and actions (where it scored them: eligible pairs)."""
    table, catalogue, _ = scored
    policy = DecisionPolicy(trained_world.result.bundle, "t", PolicyConfig(), DataConfig())
    s = policy.decide(trained_world.features, reasons=False).scored
    probes = dict(
        zip(
            DataConfig().outbound_channels,
            probe_actions(catalogue, DataConfig().outbound_channels),
            strict=True,
        )
    )
    compared = 0
    for j, (action, channel) in enumerate(zip(s.action_ids, s.channels, strict=True)):
        rows = np.isfinite(s.p_treated[:, j])
        compared += rows.sum()
        assert np.allclose(table[f"uplift_{action}"].to_numpy()[rows], s.uplift[rows, j])
        if probes[channel] == action:
            assert np.allclose(
                table[f"p_response_{channel}"].to_numpy()[rows], s.p_response[rows, j]
            )
    assert compared > 1000


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "scores.parquet"
    write_parquet_atomic(pd.DataFrame({"a": [1.0]}), target)
    bad = pd.DataFrame({"a": [object()]})  # not serialisable
    with pytest.raises(Exception):  # noqa: B017 - pyarrow's error type is not the point
        write_parquet_atomic(bad, target)
    assert pd.read_parquet(target)["a"].tolist() == [1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]
