"""Issue #27: a model that loses to its own heuristic says so (evaluate, train and the gate)."""

from training.evaluation import FamilyReport, losses_to_heuristic


def test_a_model_below_its_heuristic_is_named_with_the_numbers():
    reports = {
        "response": FamilyReport("response", {"model": {"auc": 0.52}, "heuristic": {"auc": 0.63}}),
        "purchase": FamilyReport("purchase", {"model": {"auc": 0.70}, "heuristic": {"auc": 0.64}}),
        "value": FamilyReport("value", {"model": {"mae": 150.0}, "heuristic": {"mae": 100.0}}),
    }
    assert losses_to_heuristic(reports) == [
        "the response model is worse than its heuristic on the test window (auc 0.5200 vs 0.6300)",
        "the value model is worse than its heuristic on the test window (mae 150.0000 vs 100.0000)",
    ]


def test_a_model_at_or_above_its_heuristic_passes_quietly():
    reports = {
        "response": FamilyReport("response", {"model": {"auc": 0.63}, "heuristic": {"auc": 0.63}}),
        "value": FamilyReport("value", {"model": {"mae": 90.0}, "heuristic": {"mae": 100.0}}),
        "uplift": FamilyReport("uplift", {"model": {"qini": 0.0}, "heuristic": {"qini": 1.0}}),
    }
    assert losses_to_heuristic(reports) == []
