"""The frontier finding on the committed members of the full reproduction (docs/reproduce/arch-*)."""

from pathlib import Path

from saescale.reproduce.findings import frontier
from saescale.reproduce.profiles import FULL
from saescale.reproduce.runner import stored_results
from saescale.reproduce.units import units

OUT = Path(__file__).resolve().parents[2] / "docs" / "reproduce"


def test_the_verdict_states_the_equal_budget_and_how_far_each_side_still_fell():
    """The committed penalty SAEs still fell up to a quarter over their last doubling: the reason says the
    comparison is at equal tokens, not at convergence, with each side's range taken from its members."""
    results = {u.name: stored_results(OUT, u) for u in units(FULL) if u.name.startswith("arch-")}
    f = frontier(results, {u for u, rs in results.items() if rs})
    relu = [r["last_doubling"]["rel_change"] for r in results["arch-l1-family"] if r["arch"] == "relu"]
    assert f.verdict == "reproduced"
    assert "not at convergence" in f.reason and "819,200 tokens" in f.reason
    assert f"{min(relu):.0%}-{max(relu):.0%} for ReLU" in f.reason


def test_no_budget_note_without_convergence_records():
    results = {u.name: stored_results(OUT, u) for u in units(FULL) if u.name.startswith("arch-")}
    for rs in results.values():
        for r in rs:
            r.pop("last_doubling", None)
    f = frontier(results, {u for u, rs in results.items() if rs})
    assert "convergence" not in f.reason
