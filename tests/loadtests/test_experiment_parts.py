"""The experiments' parts that need no stack: queueing formulas, /metrics arithmetic, reports, CLI."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.topology import ROOT
from loadtests.experiments import runner
from loadtests.experiments.crawler_hosts import violations
from loadtests.experiments.inference_capacity import knee
from loadtests.experiments.openloop import poisson
from loadtests.experiments.queueing import cs2, md1_wait, mg1_wait, mm1_wait_quantile, pct, rho_for_wait
from loadtests.experiments.report import Check, Report
from loadtests.experiments.scrape import Snapshot, bucket_quantile
from tests.conftest import need_binary


def test_md1_is_half_of_mm1_and_mg1_interpolates() -> None:
    # M/M/1: Wq = rho / (1 - rho) * S; M/D/1 waits half as long.
    assert mg1_wait(0.5, 1.0, cs2=1.0) == pytest.approx(1.0)
    assert md1_wait(0.5, 1.0) == pytest.approx(0.5)
    assert md1_wait(2 / 3, 0.2) == pytest.approx(0.2)  # waiting equals one service time at 2/3
    assert md1_wait(0.9, 1.0) == pytest.approx(4.5)
    assert math.isinf(md1_wait(1.0, 1.0))
    assert rho_for_wait(1.0, 1.0) == pytest.approx(2 / 3)


def test_mm1_wait_quantile() -> None:
    assert mm1_wait_quantile(0.04, 1.0, 0.95) == 0.0  # P(wait > 0) = 0.04 < 5%
    # P(W > t) = rho exp(-(1 - rho) t / S) = 0.05 at the p95.
    t = mm1_wait_quantile(0.8, 1.0, 0.95)
    assert 0.8 * math.exp(-0.2 * t) == pytest.approx(0.05)


def test_pct_and_cs2() -> None:
    assert pct([], 0.5) is None
    assert pct([3.0], 0.95) == 3.0
    assert pct([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert pct([0.0, 10.0], 0.95) == pytest.approx(9.5)
    assert cs2([2.0, 2.0, 2.0]) == 0.0
    assert cs2([1.0, 3.0]) == pytest.approx(0.25)


def test_poisson_schedule_is_seeded_ordered_and_inside_the_window() -> None:
    a = poisson(50.0, 10.0, random.Random(7), start=2.0)
    assert a == poisson(50.0, 10.0, random.Random(7), start=2.0)
    assert a == sorted(a) and all(2.0 <= t < 12.0 for t in a)
    assert 400 <= len(a) <= 600  # 500 expected; this seed is fixed, the bound is loose
    assert poisson(0.0, 10.0, random.Random(1)) == []


METRICS = """\
# TYPE req_total counter
req_total{route="/a",status="200"} 5.0
req_total{route="/a",status="503"} 2.0
req_total{route="/b",status="200"} 1.0
# TYPE lat_seconds histogram
lat_seconds_bucket{le="0.1"} 2.0
lat_seconds_bucket{le="0.2"} 6.0
lat_seconds_bucket{le="+Inf"} 10.0
lat_seconds_count 10.0
lat_seconds_sum 3.0
"""


def test_snapshot_sums_matching_series_and_subtracts() -> None:
    before = Snapshot.parse(METRICS, at=100.0)
    after = Snapshot.parse(METRICS.replace("} 5.0", "} 9.0"), at=104.0)
    assert before.value("req_total") == 8.0
    assert before.value("req_total", route="/a") == 7.0
    assert before.value("req_total", route="/a", status="200") == 5.0
    assert before.value("nothing_total") == 0.0
    assert before.by_label("req_total", "status") == {"200": 6.0, "503": 2.0}
    delta = after - before
    assert delta.at == 4.0
    assert delta.value("req_total", status="200") == 4.0
    assert delta.value("req_total", status="503") == 0.0


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    snap = Snapshot.parse(METRICS)
    # rank 5 of 10 falls in (0.1, 0.2] holding ranks 3..6: 0.1 + 0.1 * (5 - 2) / 4.
    assert snap.quantile("lat_seconds", 0.5) == pytest.approx(0.175)
    # rank 9.5 is in the +Inf bucket: Prometheus answers the highest finite bound.
    assert snap.quantile("lat_seconds", 0.95) == pytest.approx(0.2)
    assert bucket_quantile([], 0.5) is None
    assert bucket_quantile([(1.0, 0.0), (math.inf, 0.0)], 0.5) is None


def test_check_holds_within_one_percent_either_way() -> None:
    assert Check("x", 100, 100).ok
    assert Check("x", 0, 0).ok
    assert Check("x", 99.5, 100).ok
    assert not Check("x", 98, 100).ok
    assert not Check("x", 0, 1).ok


def test_report_writes_json_csv_markdown_and_withholds_the_answer_when_a_check_fails(tmp_path: Path) -> None:
    r = Report("demo", "Demo", "Does it?")
    r.predict("it does", "it will", x=1.0)
    r.rows = [{"load": 1, "p95_ms": 12.5}, {"load": 2, "p95_ms": math.inf}]
    r.check("requests", 10, 10)
    r.conclude(True, "It did.", "Take this away.")
    r.write(tmp_path / "demo")
    data = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert data["verdict"] == "agrees" and data["checks_hold"] and data["predicted_at"] is not None
    assert data["rows"][1]["p95_ms"] == "inf"  # strict JSON
    assert (tmp_path / "demo" / "results.csv").read_text().splitlines()[0] == "load,p95_ms"
    assert "**Answer (agrees).** It did." in (tmp_path / "demo" / "report.md").read_text()
    r.check("tokens", 90, 100)
    assert r.verdict.startswith("INVALID")


def test_knee_is_the_last_step_meeting_the_objective_before_it_breaks() -> None:
    rows = [
        {"load_x": 0.5, "inter_ttft_p95_ms": 100.0, "inter_reject_rate": 0.0, "inter_error_rate": 0.0},
        {"load_x": 1.0, "inter_ttft_p95_ms": 400.0, "inter_reject_rate": 0.0, "inter_error_rate": 0.0},
        {"load_x": 1.5, "inter_ttft_p95_ms": 900.0, "inter_reject_rate": 0.0, "inter_error_rate": 0.0},
        {"load_x": 2.0, "inter_ttft_p95_ms": 300.0, "inter_reject_rate": 0.5, "inter_error_rate": 0.0},
    ]
    assert knee(rows) == 1.0
    rows[1]["inter_reject_rate"] = 0.02  # objective met but 2% shed: not within the knee
    assert knee(rows) == 0.5
    assert knee([{"load_x": 0.5, "inter_ttft_p95_ms": None}]) is None


def test_politeness_violations_are_start_to_start_gaps_below_the_delay() -> None:
    log = [{"ts": t} for t in (0.0, 0.5, 1.0, 1.3, 2.0, 2.497)]
    assert violations(log, 0.5) == 1  # 1.0 -> 1.3; 2.0 -> 2.497 is within the 5 ms tolerance


def test_every_experiment_is_registered_with_a_question() -> None:
    known = runner.experiments()
    assert set(known) == {
        "inference-capacity",
        "utilisation",
        "batching",
        "fairness",
        "embeddings-delay",
        "crawler-hosts",
        "dedup-consumers",
    }
    for module in known.values():
        assert module.QUESTION.endswith("?") and callable(module.run)


@pytest.mark.parametrize(
    ("args", "field"),
    [(["no-such-experiment"], "NAME"), (["utilisation", "--url", "inference"], "--url")],
)
def test_bad_usage_exits_2_with_one_line(args: list[str], field: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.experiments", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and field in result.stderr and "Traceback" not in result.stderr


def test_a_stack_that_is_not_up_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = 9  # discard: nothing listens there
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.experiments",
            "crawler-hosts",
            "--url",
            f"crawler=http://127.0.0.1:{port}",
            "--url",
            f"websim=http://127.0.0.1:{port}",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "does not answer" in result.stderr and "Traceback" not in result.stderr


def test_dedup_experiment_without_a_stack_redis_runs_its_own(tmp_path: Path) -> None:
    """`make run REDIS=` has no Redis: experiment 7 starts a redis-server of its own and says so."""
    need_binary("redis-server")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.experiments",
            "dedup-consumers",
            "--smoke",
            "--url",
            "redis=redis://127.0.0.1:9/0",  # nothing listens on the discard port
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "dedup-consumers" / "report.json").read_text())
    assert report["checks_hold"] and any("its own redis-server" in n for n in report["notes"])
