"""The action catalogue: the default loads, bad files fail with errors naming the action and field."""

import numpy as np
import pandas as pd
import pytest

from features.config import DataConfig
from serving.catalogue import Catalogue, Rule, load_catalogue


def _write(tmp_path, text: str):
    path = tmp_path / "catalogue.yaml"
    path.write_text(text)
    return path


def test_default_catalogue_loads_and_matches_the_feature_table(trained_world):
    catalogue, text = load_catalogue()
    assert len(catalogue.ids) == len(set(catalogue.ids)) >= 5
    assert "actions:" in text
    catalogue.check_against(DataConfig(), list(trained_world.features.columns))


def test_an_invalid_field_is_named_with_the_action_id(tmp_path):
    path = _write(
        tmp_path,
        "actions:\n"
        "  - {id: ok, channel: email, cost: 0.1, margin: 0.3}\n"
        "  - {id: letter, channel: direct_mail, cost: -1, margin: 0.3}\n",
    )
    with pytest.raises(ValueError, match=r"actions\.1 \(letter\)\.cost"):
        load_catalogue(path)


def test_duplicate_ids_and_reserved_names_are_refused(tmp_path):
    dupes = "actions:\n" + "  - {id: a, channel: email, cost: 0, margin: 0.3}\n" * 2
    with pytest.raises(ValueError, match="repeated"):
        load_catalogue(_write(tmp_path, dupes))
    reserved = "actions:\n  - {id: do_nothing, channel: email, cost: 0, margin: 0.3}\n"
    with pytest.raises(ValueError, match="reserved"):
        load_catalogue(_write(tmp_path, reserved))


def test_unparseable_rule_and_unknown_feature_fail_loudly(tmp_path):
    bad_rule = (
        "actions:\n  - {id: a, channel: email, cost: 0, margin: 0.3, "
        "eligibility: ['tenure_days >> 3']}\n"
    )
    with pytest.raises(ValueError, match="tenure_days >> 3"):
        load_catalogue(_write(tmp_path, bad_rule))
    typo = Catalogue.model_validate(
        {
            "actions": [
                {
                    "id": "a",
                    "channel": "email",
                    "cost": 0,
                    "margin": 0.3,
                    "eligibility": ["tenur_days > 30"],
                }
            ]
        }
    )
    with pytest.raises(ValueError, match="'a'.*tenur_days"):
        typo.check_against(DataConfig(), ["tenure_days"])
    web = Catalogue.model_validate(
        {"actions": [{"id": "w", "channel": "web", "cost": 0, "margin": 0.3}]}
    )
    with pytest.raises(ValueError, match="not an outbound channel"):
        web.check_against(DataConfig(), [])


def test_rules_handle_numbers_categories_and_missing_values():
    frame = pd.DataFrame(
        {
            "days": [1.0, 5.0, np.nan],
            "tier": pd.Series(["gold", "none", None], dtype="string"),
        }
    )
    assert Rule.parse("days > 3").evaluate(frame).tolist() == [False, True, False]
    assert Rule.parse("days > 3 or missing").evaluate(frame).tolist() == [False, True, True]
    assert Rule.parse("tier != none").evaluate(frame).tolist() == [True, False, False]
    assert Rule.parse("tier == 'gold'").evaluate(frame).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="needs a number"):
        Rule.parse("tier > gold")
