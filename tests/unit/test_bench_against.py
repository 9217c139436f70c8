"""The regression guard's arithmetic (bench.against.compare): medians over rounds, the ratio
working / REF, and which direction is worse for each figure."""

from __future__ import annotations

from typing import Any

import pytest

from bench.against import TOLERANCE, compare


def _run(**figures: float) -> dict[str, Any]:
    return {"derived": [{"name": "a25", **figures}]}


def test_ratios_are_of_the_medians_and_flag_only_the_worse_direction() -> None:
    ref = [_run(gw_cpu_per_write_us=10.0, delivered_pct=100.0), _run(gw_cpu_per_write_us=12.0,
           delivered_pct=100.0), _run(gw_cpu_per_write_us=50.0, delivered_pct=100.0)]  # fmt: skip
    new = [_run(gw_cpu_per_write_us=13.5, delivered_pct=80.0)] * 3
    rows = {r["figure"]: r for r in compare(ref, new)}
    cpu, delivered = rows["gw_cpu_per_write_us"], rows["delivered_pct"]
    assert cpu["ref"] == 12.0 and cpu["new"] == 13.5  # the median, not the mean (22)
    assert cpu["ratio"] == pytest.approx(1.125) and cpu["worse"]
    assert delivered["ratio"] == pytest.approx(0.8) and delivered["worse"]  # higher is better


@pytest.mark.parametrize(
    ("figure", "ratio", "worse"),
    [
        ("p99_ms", 1 + TOLERANCE * 0.9, False),
        ("p99_ms", 1 + TOLERANCE * 1.1, True),
        ("p99_ms", 0.5, False),  # faster is never flagged
        ("rss_per_conn_kb", 1 + TOLERANCE * 1.1, True),
        ("delivered_pct", 1.0, False),
        ("delivered_pct", 1 - TOLERANCE * 1.1, True),
    ],
)
def test_tolerance(figure: str, ratio: float, worse: bool) -> None:
    (row,) = compare([_run(**{figure: 100.0})], [_run(**{figure: 100.0 * ratio})])
    assert row["worse"] is worse


def test_only_figures_both_trees_have_are_compared() -> None:
    rows = compare([_run(gw_cpu_per_1k_ms=5.0)], [_run(gw_cpu_per_1k_ms=5.0, p99_ms=3.0)])
    assert [(r["figure"], r["ratio"]) for r in rows] == [("gw_cpu_per_1k_ms", 1.0)]


def test_the_hot_path_is_compared_as_a_row_of_its_own() -> None:
    ref = [{**_run(p99_ms=3.0), "hotpath": {"ns_per_delivery": ns}} for ns in (500, 520, 900)]
    new = [{**_run(p99_ms=3.0), "hotpath": {"ns_per_delivery": 450.0}}] * 3
    rows = {(r["scenario"], r["figure"]): r for r in compare(ref, new)}
    hot = rows[("hot", "hot_ns_per_delivery")]
    assert hot["ref"] == 520.0 and hot["ratio"] == pytest.approx(450 / 520) and not hot["worse"]
    assert ("a25", "p99_ms") in rows
