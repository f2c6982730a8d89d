"""`nba train` killed with SIGKILL at the moment a half-finished model could be taken for a
finished one: right after the bundle version is registered, before its checksum is recorded and
an alias set. No alias is left on it; the rerun finishes and registers the same models.
(benchmarks/kill_restart.py kills it at random moments, again and again.)"""

from __future__ import annotations

import pytest
from killed_train import (
    aliases,
    check_aliases,
    kill_when,
    predictions,
    same_predictions,
    start_train,
    versions_registered,
)

from features.config import DataConfig
from features.ingest.contract import DataDir
from features.ingest.event_store import ingest
from features.synthetic.world import generate_world
from training import registry

pytestmark = pytest.mark.integration


def test_a_killed_train_leaves_no_alias_on_a_half_logged_model_and_a_rerun_matches(tmp_path):
    root = tmp_path / "world"
    generate_world(root, customers=500, days=150, seed=11, progress=False)
    ingest(DataDir(root), DataConfig(), progress=False)
    log = tmp_path / "train.log"

    # killed the moment its version is registered: no checksum, no alias yet
    proc = start_train(root, log)
    assert kill_when(proc, lambda: versions_registered(root) > 0, 600), log.read_text()
    killed = str(versions_registered(root))
    assert aliases(root) == {}

    # the rerun finishes: champion and challenger on a whole, verified version
    proc = start_train(root, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    found = check_aliases(root)
    assert found[registry.CHAMPION] == found[registry.CHALLENGER] != killed
    # the same models as the killed run registered (its files whole; checksum taken here)
    from training.model_safety import record_checksum

    record_checksum(killed)
    assert same_predictions(predictions(root, killed), predictions(root, found[registry.CHAMPION]))
