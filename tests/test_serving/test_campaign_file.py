"""The campaign file: the shipped example is valid; every malformed case names its field."""

from __future__ import annotations

import pytest

from features.config import DataConfig
from serving.campaign import load_campaign, parse_campaign
from serving.catalogue import load_catalogue

CATALOGUE, _ = load_catalogue()
GOOD = {
    "name": "spring",
    "decision_date": "2026-01-01",
    "actions": ["email_newin", "dm_catalog", "call_winback"],
    "capacities": {"call_centre": 5000, "direct_mail": 20000},
    "caps": {"dm_catalog": 3000},
    "budget": 100000,
    "holdout": {"fraction": 0.1, "actions": {"call_winback": 0.2}, "seed": 1},
    "objective": "profit",
}


def _parse(raw):
    return parse_campaign(raw, CATALOGUE, DataConfig(), source="c.yaml")


def test_the_shipped_example_is_valid_against_the_default_catalogue():
    campaign, text = load_campaign(None, CATALOGUE, DataConfig())
    assert campaign.actions and set(campaign.actions) <= set(CATALOGUE.ids)
    assert "capacities" in text and campaign.budget is not None


def test_a_good_campaign_parses_with_its_defaults():
    c = _parse(GOOD)
    assert c.holdout.of("call_winback") == 0.2 and c.holdout.of("email_newin") == 0.1
    assert str(c.decision_time()) == "2026-01-01 00:00:00+00:00"
    assert [a.id for a in c.offered(CATALOGUE).actions] == GOOD["actions"]
    minimal = _parse({"name": "m", "actions": ["email_newin"]})
    assert minimal.budget is None and minimal.objective == "profit"
    assert minimal.decision_time() is None


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"capacities": {"call_centre": -1}}, "capacities", "must be >= 0"),
        ({"capacities": {"fax": 10}}, "capacities", "unknown channel 'fax'"),
        ({"capacities": {"call_centre": "many"}}, "capacities.call_centre", "valid integer"),
        ({"actions": ["email_newin", "sms_flsh"]}, "actions", "unknown action 'sms_flsh'"),
        ({"actions": []}, "actions", "no action"),
        ({"actions": ["email_newin", "email_newin"]}, "actions", "listed twice"),
        ({"actions": ["do_nothing"]}, "actions", "always on offer"),
        ({"budget": "a lot"}, "budget", "valid number"),
        ({"budget": -5}, "budget", ">= 0"),
        ({"budget": float("inf")}, "budget", "finite"),
        ({"caps": {"dm_catalog": -3}}, "caps", "must be >= 0"),
        ({"caps": {"sms_flash": 3}}, "campaign", "not on offer"),
        ({"holdout": {"fraction": 1.5}}, "holdout.fraction", "less than 1"),
        ({"holdout": {"actions": {"dm_catalog": -0.1}}}, "holdout.actions", "[0, 1)"),
        ({"holdout": {"seed": "x"}}, "holdout.seed", "valid integer"),
        ({"objective": "clicks"}, "objective", "'profit' or 'responses'"),
        ({"name": "has space"}, "name", "letters, digits"),
        ({"decision_date": "next tuesday"}, "decision_date", "datetime"),
        ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_a_malformed_campaign_names_the_field(change, field, words):
    with pytest.raises(ValueError) as err:
        _parse({**GOOD, **change})
    text = str(err.value)
    assert "c.yaml: invalid campaign" in text
    assert f"  {field}" in text and words in text, text


def test_required_fields_and_shape():
    for missing in ("name", "actions"):
        raw = {k: v for k, v in GOOD.items() if k != missing}
        with pytest.raises(ValueError, match=f"  {missing}: Field required"):
            _parse(raw)
    with pytest.raises(ValueError, match="a campaign is a mapping"):
        _parse(["not", "a", "mapping"])


def test_a_file_that_is_not_yaml_or_missing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_campaign(bad, CATALOGUE, DataConfig())
    with pytest.raises(FileNotFoundError):
        load_campaign(tmp_path / "absent.yaml")
