"""bench.hotpath: the gateway's dispatch and flush in process, every event to every stream."""

from __future__ import annotations

from bench.hotpath import hot_path_ns


def test_a_small_run_delivers_everything_and_reports_each_pass() -> None:
    result = hot_path_ns(streams=50, events=20, repeats=3)
    assert result["streams"] == 50 and len(result["passes_ns"]) == 3
    assert result["ns_per_delivery"] == min(result["passes_ns"]) > 0
