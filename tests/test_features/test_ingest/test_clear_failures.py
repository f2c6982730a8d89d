"""Issue #27, what a first real user meets at ingest: a clear refusal, and settings in words.

A purchase log keyed by the shop's own identifier type is refused by `nba ingest` (exit 2, no
current store) with the setting that fixes it; a share of rejected rows past
`data.validation.min_accepted_share` is refused too; configuration mistakes are one line in the
project's words; one channel's settings change without restating the channel list.
"""

import pandas as pd
import pytest
from real_like import one_line_error, purchase_log, run_nba

from features.config import ConfigError, DataConfig, load_data_config
from features.ingest.event_store import IngestRefused, ingest, store_is_current


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A purchase-only log, 700 customers, keys `shop:00012`."""
    return purchase_log(tmp_path_factory.mktemp("shop") / "shop", customers=700, seed=3)


def test_a_log_of_an_unknown_identifier_type_is_refused_with_the_setting(shop):
    done = run_nba("ingest", "--data", str(shop))
    line = one_line_error(done, "ingest")
    received = len(pd.read_csv(shop / "events.csv"))
    assert f"0 of {received:,} events accepted" in line
    assert "unknown identifier type 'shop'" in line
    assert "add it to data.identity.identifier_types" in line
    # the table still says what happened, with the fix beside it
    assert "malformed_customer_key" in done.stdout and "fix: unknown identifier type" in done.stdout
    assert not store_is_current(shop)
    # the next command does not go on with an empty store: the same refusal, one line
    again = one_line_error(run_nba("train", "--data", str(shop)), "train")
    assert "unknown identifier type 'shop'" in again


def test_the_shop_type_configured_is_accepted(shop, tmp_path):
    config = tmp_path / "nba.yaml"
    config.write_text(
        "data:\n  identity:\n    identifier_types: [shop]\n"
        "  channels:\n    - {name: store, identifier: shop}\n"
    )
    done = run_nba("ingest", "--data", str(shop), "--config", str(config), check=0)
    assert "fix:" not in done.stdout
    assert store_is_current(shop)


def test_less_than_the_configured_share_accepted_is_refused(shop, tmp_path):
    """60% of the rows on a channel the configuration lacks: below the default share of 0.5
    the run stops and names data.channels; with the share lowered it goes on and says the fix."""
    data = tmp_path / "mixed"
    data.mkdir()
    events = pd.read_csv(shop / "events.csv")
    moved = events.index % 5 < 3
    events.loc[moved, "channel"] = "shopfloor"
    events.to_csv(data / "events.csv", index=False)
    base = "data:\n  identity:\n    identifier_types: [shop]\n  channels:\n    - {name: store, identifier: shop}\n"
    config = tmp_path / "nba.yaml"
    config.write_text(base)
    line = one_line_error(run_nba("ingest", "--data", str(data), "--config", str(config)), "ingest")
    accepted = int((~moved).sum())
    assert f"{accepted:,} of {len(events):,} events accepted" in line
    assert "data.validation.min_accepted_share is 0.5" in line
    assert "unknown channel 'shopfloor'" in line and "add it to data.channels" in line
    config.write_text(base + "  validation:\n    min_accepted_share: 0.3\n")
    done = run_nba("ingest", "--data", str(data), "--config", str(config), check=0)
    assert "fix: unknown channel 'shopfloor'" in done.stdout
    assert store_is_current(data)


def test_the_library_refuses_too_and_keeps_the_reports(shop):
    with pytest.raises(IngestRefused) as refused:
        ingest(shop, DataConfig(), progress=False)
    assert refused.value.events.accepted == 0
    assert refused.value.hints[0].startswith("unknown identifier type 'shop'")


def test_debug_shows_the_traceback(shop):
    done = run_nba("ingest", "--data", str(shop), "--debug")
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "IngestRefused" in done.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "data:\n  channels:\n    shop: {outbound: true}\n",
            "data.channels.shop.identifier: required (Identifier type the channel's own",
        ),
        (
            "data:\n  channels:\n    call_centre: {respnse: purchase}\n",
            "data.channels.call_centre.respnse: unknown setting (known: name, outbound, "
            "response, realtime, identifier)",
        ),
        (
            "data:\n  channels:\n    - {name: store, outbound: true}\n",
            "data.channels.store.identifier: required",
        ),
        (
            "data:\n  channels:\n    store: {identifier: shop}\n",
            "data.channels.store.identifier: unknown identifier type 'shop': add it to "
            "data.identity.identifier_types",
        ),
        (
            "data:\n  validation:\n    min_accepted_share: 2\n",
            "data.validation.min_accepted_share: input should be less than or equal to 1, got 2",
        ),
        ("data: [1\n", "not valid YAML"),
    ],
)
def test_configuration_mistakes_are_one_line_in_the_projects_words(shop, tmp_path, text, expected):
    config = tmp_path / "nba.yaml"
    config.write_text(text)
    line = one_line_error(
        run_nba("validate", "--data", str(shop), "--config", str(config)), "validate"
    )
    assert expected in line
    assert "pydantic" not in line and "validation error for" not in line and "[type=" not in line


def test_a_missing_configuration_file_is_one_line(shop, tmp_path):
    line = one_line_error(
        run_nba("validate", "--data", str(shop), "--config", str(tmp_path / "nope.yaml")),
        "validate",
    )
    assert "nope.yaml does not exist" in line


def test_one_channels_settings_without_restating_the_list(tmp_path):
    config = tmp_path / "nba.yaml"
    config.write_text(
        "data:\n  channels:\n    call_centre:\n      response: purchase\n"
        "    kiosk: {identifier: device}\n    direct_mail: null\n"
    )
    cfg = load_data_config(config)
    defaults = DataConfig()
    assert cfg.channel("call_centre").response == "purchase"
    # the rest of call_centre and every other default channel as they were
    assert cfg.channel("call_centre").outbound and cfg.channel("call_centre").identifier == "phone"
    assert cfg.channel("email") == defaults.channel("email")
    assert "kiosk" in cfg.channel_names and "direct_mail" not in cfg.channel_names
    assert len(cfg.channel_names) == len(defaults.channel_names)
    # a value that is not a mapping is named
    config.write_text("data:\n  channels:\n    call_centre: purchase\n")
    with pytest.raises(ConfigError, match="data.channels.call_centre: expected the channel's"):
        load_data_config(config)
