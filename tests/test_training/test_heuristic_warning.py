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


def test_a_narrow_terminal_keeps_every_number(monkeypatch):
    """Issue #27: the purchase table came out empty of rows in a narrow terminal. Narrow, each
    metric is a line with every scorer's number; wide, a table; both with the warning."""
    import io

    from rich.console import Console

    from training import cli

    reports = {
        "purchase": FamilyReport(
            "purchase",
            {
                "model": {"auc": 0.6132, "lift_top_decile": 1.4082, "rows": 2874.0},
                "heuristic": {"auc": 0.6741, "lift_top_decile": 1.1892, "rows": 2874.0},
            },
        )
    }
    for width in (36, 120):
        out = io.StringIO()
        monkeypatch.setattr(cli, "console", Console(file=out, width=width, color_system=None))
        cli._print_reports(reports)
        text = out.getvalue()
        for number in ("0.6132", "0.6741", "1.4082", "1.1892", "2,874"):
            assert number in text, (width, text)
        assert "warning: the purchase model is worse than its heuristic" in " ".join(text.split())
        assert max(len(line) for line in text.splitlines()) <= width
