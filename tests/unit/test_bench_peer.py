"""The gateway against its peer (bench.peer, bench.fanout --peer): the ratios gateway / peer
per round and of the medians, which figures each scenario gets, the RSS slope, the order the
runs go in, and a peer that is not installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import bench.fanout
from bench.peer import SLOPE, compare, print_peer, ratio
from bench.report import derive


def _run(scenario: str, round_: int, server: str, **figures: float) -> dict[str, Any]:
    return {"scenario": scenario, "round": round_, "server": server, "derived": figures}


def _rows(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["scenario"], r["figure"]): r for r in compare(runs, "nchan")}


def test_ratio_is_gateway_over_peer() -> None:
    assert ratio(5.0, 10.0) == 0.5
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None


def test_each_round_and_the_medians() -> None:
    runs = [
        _run("a25", 0, "gateway", gw_cpu_per_1k_ms=10.0, delivered_pct=100.0),
        _run("a25", 0, "nchan", gw_cpu_per_1k_ms=8.0, delivered_pct=100.0),
        _run("a25", 1, "gateway", gw_cpu_per_1k_ms=12.0, delivered_pct=100.0),
        _run("a25", 1, "nchan", gw_cpu_per_1k_ms=12.0, delivered_pct=64.0),
        _run("a25", 2, "gateway", gw_cpu_per_1k_ms=30.0, delivered_pct=100.0),
        _run("a25", 2, "nchan", gw_cpu_per_1k_ms=10.0, delivered_pct=70.0),
    ]
    rows = _rows(runs)
    cpu = rows[("a25", "gw_cpu_per_1k_ms")]
    assert cpu["gateway"] == [10.0, 12.0, 30.0] and cpu["peer"] == [8.0, 12.0, 10.0]
    assert cpu["ratios"] == [pytest.approx(1.25), 1.0, 3.0]
    assert cpu["ratio"] == pytest.approx(12.0 / 10.0)  # of the medians, not the mean ratio
    assert rows[("a25", "delivered_pct")]["ratio"] == pytest.approx(100.0 / 70.0)
    # figures neither side has are left out; the idle figures only for idle scenarios
    assert set(rows) == {("a25", "gw_cpu_per_1k_ms"), ("a25", "delivered_pct")}


def test_idle_figures_and_the_rss_slope() -> None:
    runs = []
    for server, small, big in (("gateway", 80.0, 160.0), ("nchan", 40.0, 150.0)):
        runs.append(_run("a25", 0, server, rss_mb=small, connected=2000, rss_per_conn_kb=9.0))
        runs.append(
            _run("e", 0, server, rss_mb=big, connected=10_000, rss_per_conn_kb=11.0,
                 idle_cpu_pct=0.5)
        )  # fmt: skip
    rows = _rows(runs)
    assert ("a25", "rss_per_conn_kb") not in rows  # a stream there is not idle for long
    assert rows[("e", "rss_per_conn_kb")]["ratio"] == 1.0
    assert rows[("e", "idle_cpu_pct")]["ratio"] == 1.0
    slope = rows[("2k->10k", SLOPE)]
    assert slope["gateway"] == [pytest.approx(10.0)] and slope["peer"] == [pytest.approx(13.75)]


def test_a_scenario_one_side_lacks_is_not_compared() -> None:
    runs = [_run("a25", 0, "gateway", p99_ms=20.0), _run("b", 0, "nchan", p99_ms=200.0)]
    assert compare(runs, "nchan") == []


def test_an_absent_peer_is_said(capsys: pytest.CaptureFixture[str]) -> None:
    print_peer({"name": "nchan", "unavailable": "nchan is not installed"}, 2.7)
    assert capsys.readouterr().out == "peer nchan: not run: nchan is not installed\n"


def test_derive_gives_redis_cpu_per_delivery() -> None:
    raw: dict[str, Any] = {
        "name": "a25", "title": "t", "kind": "broadcast", "clients": 2, "rate": 1.0,
        "connected": 2, "failed": 0, "rss_idle": 2000, "rss_before": 1000, "pubsub": {},
        "published": 10, "expected": 20, "delivered": 20, "gw_cpu_s": 0.02, "evictions": {},
        "gw_user_s": 0.005, "redis_cpu_s": {"redis": 0.004},
        "client": {"events_healthy": 20, "events_stalled": 0, "hist_healthy": [[0, 10, 20]],
                   "lat_max_us": [10, 0], "cpu_user_s": 0.0, "cpu_sys_s": 0.0, "chunks": 0},
    }  # fmt: skip
    d = derive(raw)
    assert d["redis_cpu_per_1k_ms"] == pytest.approx(200.0)
    assert d["gw_cpu_per_1k_ms"] == pytest.approx(1000.0)
    assert d["gw_user_per_1k_ms"] == pytest.approx(250.0)  # nchan's too: per delivery
    assert d["gw_cpu_per_write_us"] is None  # nchan's stream is not chunked: no writes to count


def _raw(name: str, server: str, cpu: float) -> dict[str, Any]:
    idle = name == "e"
    raw: dict[str, Any] = {
        "name": name, "title": name, "kind": "idle" if idle else "broadcast", "server": server,
        "clients": 10, "rate": 0.0 if idle else 1.0, "connected": 10, "failed": 0,
        "rss_idle": 2000, "rss_before": 1000, "pubsub": {server: 1, "other": 0},
        "measure_s": 1.0,
        "client": {"events_healthy": 10, "events_stalled": 0, "hist_healthy": [[0, 10, 10]],
                   "lat_max_us": [10, 0], "cpu_user_s": 0.0, "cpu_sys_s": 0.0, "chunks": 10},
    }  # fmt: skip
    if idle:
        raw["idle_cpu_s"] = cpu
    else:
        raw.update(published=1, expected=10, delivered=10, gw_cpu_s=cpu, evictions={})
    return raw


@pytest.fixture
def fake_bench(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """bench.fanout.main with every run faked: the (scenario, server) of each, in order."""
    calls: list[tuple[str, str]] = []

    def run_scenario(sc: Any, *, log: Any, server: str = "gateway", **_: Any) -> dict[str, Any]:
        calls.append((sc.name, server))
        return _raw(sc.name, server, 0.01 if server == "gateway" else 0.02)

    monkeypatch.setattr(bench.fanout, "run_scenario", run_scenario)
    monkeypatch.setattr(bench.fanout, "build", lambda: Path("loadclient"))
    monkeypatch.setattr(bench.fanout, "plot", lambda report, path: None)
    monkeypatch.setattr(bench.fanout, "_environment", lambda: {"cpus": 2, "python": "3",
                        "redis_server": "7", "commit": "x"})  # fmt: skip
    monkeypatch.setattr(bench.fanout, "nchan_missing", lambda: None)
    monkeypatch.setattr(bench.fanout, "nchan_version", lambda: "1.3.6")
    return calls


def test_the_runs_interleave_and_the_json_gains_the_peer(
    fake_bench: list[tuple[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fanout.json"
    argv = ["--peer", "nchan", "--quick", "--no-baseline", "--out", str(out)]
    argv += ["--scenario", "a25", "--scenario", "e", "--scenario", "f"]
    assert bench.fanout.main([*argv, "--plot", str(tmp_path / "p.png")]) == 0
    assert fake_bench == [
        ("a25", "gateway"), ("a25", "nchan"), ("a25", "gateway"), ("a25", "nchan"),
        ("e", "gateway"), ("e", "nchan"), ("e", "gateway"), ("e", "nchan"),
        ("f", "gateway"),  # not a scenario for the peer: the gateway alone, once
    ]  # fmt: skip
    report = json.loads(out.read_text())
    assert [d["name"] for d in report["derived"]] == ["a25", "e", "f"]  # round 1's
    peer = report["peer"]
    assert peer["version"] == "1.3.6" and peer["rounds"] == 2 and "f" in peer["skipped"]
    assert len(peer["runs"]) == 8
    cpu = next(r for r in peer["ratios"] if r["figure"] == "gw_cpu_per_1k_ms")
    assert cpu["scenario"] == "a25" and cpu["ratio"] == pytest.approx(0.5)
    printed = capsys.readouterr().out
    assert "gateway / nchan 1.3.6" in printed and "0.50x" in printed


def test_without_nchan_the_gateway_runs_alone(
    fake_bench: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench.fanout, "nchan_missing", lambda: "nchan is not installed")
    out = tmp_path / "fanout.json"
    argv = ["--peer", "nchan", "--quick", "--no-baseline", "--scenario", "a25"]
    assert bench.fanout.main([*argv, "--out", str(out), "--plot", str(tmp_path / "p.png")]) == 0
    assert fake_bench == [("a25", "gateway")]
    assert json.loads(out.read_text())["peer"] == {
        "name": "nchan",
        "unavailable": "nchan is not installed",
    }


def test_against_and_peer_are_one_at_a_time() -> None:
    with pytest.raises(SystemExit):
        bench.fanout.main(["--peer", "nchan", "--against", "HEAD"])
