"""Issue #27, item 7: which catalogue actions a data set cannot support, and why, in words."""

import pytest

from features.config import ChannelConfig, DataConfig, IdentityConfig
from features.errors import UserError
from features.store.definitions import FeatureConfig, FeatureSet
from serving.catalogue import load_catalogue


def test_the_default_catalogue_on_a_one_channel_call_centre():
    data = DataConfig(
        channels=[
            ChannelConfig(name="call_centre", outbound=True, response="purchase", identifier="bank")
        ],
        identity=IdentityConfig(identifier_types=["bank"]),
    )
    columns = FeatureSet(data, FeatureConfig()).names
    catalogue, _ = load_catalogue()
    problems = catalogue.unusable(data, columns)
    # every action off the call centre, and only those, with the channel named
    assert set(problems) == {a.id for a in catalogue.actions if a.channel != "call_centre"}
    assert problems["email_loyalty"].startswith("channel 'email' is not an outbound channel")
    kept = catalogue.without(set(problems))
    assert kept.ids == ["call_winback"]
    kept.check_against(data, columns)  # what is left runs
    with pytest.raises(UserError, match="action 'email_discount': channel 'email'"):
        catalogue.check_against(data, columns)


def test_a_rule_on_a_missing_profile_column_is_named():
    data = DataConfig()
    columns = FeatureSet(data, FeatureConfig()).names  # no customers table: no profile_*
    catalogue, _ = load_catalogue()
    problems = catalogue.unusable(data, columns)
    assert problems == {
        "email_loyalty": "eligibility rule 'profile_loyalty_tier != none' names "
        "'profile_loyalty_tier', which is not a feature column of this data"
    }
    assert catalogue.without(problems).ids == [i for i in catalogue.ids if i != "email_loyalty"]
