"""Sweeps: grid expansion, common random numbers, resume after a crash, failing points, bad sweep
files, aggregation with confidence intervals, the Pareto frontier, and Dask = process pool."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, base_dict
from scipy import stats

from sim.errors import InputError
from sim.runner import build
from sim.scenario import scenario_from_dict
from sim.sweep import (
    SweepSpec,
    aggregate,
    apply_params,
    expand,
    load_sweep,
    make_points,
    pareto_frontier,
    replication_seed,
)
from simcli.sweep_cmd import cmd_sweep

RUN = [sys.executable, str(ROOT / "run.py")]


def sweep_file(tmp_path: Path, sweep: dict, **over) -> Path:
    d = base_dict(**{"duration_s": 20.0, **over})
    d["sweep"] = sweep
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(d), encoding="utf-8")
    return p


def args_for(path: Path, out: Path, **kw) -> argparse.Namespace:
    a = {"sweep_file": str(path), "workers": 1, "dask": None, "out": out, "fresh": False, "set": [], "quiet": True,
         "no_report": True}
    a.update(kw)
    return argparse.Namespace(**a)


def test_grid_and_zip_expansion():
    spec = SweepSpec(axes={"a": [1, 2, 3], "b": ["x", "y"]}, zip={"c": [10, 20], "d": [0.1, 0.2]})
    pts = expand(spec)
    assert len(pts) == 3 * 2 * 2
    assert pts[0] == {"a": 1, "b": "x", "c": 10, "d": 0.1}
    assert pts[1] == {"a": 1, "b": "x", "c": 20, "d": 0.2}
    assert {(p["c"], p["d"]) for p in pts} == {(10, 0.1), (20, 0.2)}   # zipped, never crossed
    assert len(expand(SweepSpec(zip={"c": [1, 2, 3]}))) == 3
    points = make_points(pts, 3, root_seed=7)
    assert len(points) == 36 and len({p.key for p in points}) == 36


@pytest.mark.parametrize("sweep,needle", [
    ({"axes": {"serving.replicaz": [1, 2]}}, "'serving.replicaz' is not a scenario key"),
    ({"axes": {"serving.replicas": []}}, "sweep.axes.serving.replicas: the axis is empty"),
    ({"zip": {"serving.replicas": [1, 2], "workload.arrivals.rate_per_s": [1, 2, 3]}}, "equal lengths"),
    ({"axes": {}}, "at least one axis"),
    ({"axes": {"serving.replicas": [1]}, "replications": 0}, "sweep.replications"),
    ({"axes": {"serving.replicas": [1, -2]}}, "serving.replicas"),
    ({"axes": {"serving.replicas": [1]}, "grid": {}}, "sweep.grid"),
    ({"axes": {"seed": [1, 2, 3]}}, "sweep.axes.seed: 'seed' is not a sweep axis"),
    ({"zip": {"replication": [1, 2]}}, "sweep.zip.replication: 'replication' is not a sweep axis"),
])
def test_bad_sweep_files(tmp_path, sweep, needle):
    p = sweep_file(tmp_path, sweep)
    with pytest.raises(InputError, match=None) as err:
        load_sweep(p)
    assert needle in str(err.value)
    r = subprocess.run([*RUN, "sweep", str(p), "--out", str(tmp_path / "o"), "--workers", "1"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_missing_sweep_block(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(base_dict()), encoding="utf-8")
    with pytest.raises(InputError, match="no 'sweep:' block"):
        load_sweep(p)


def test_common_random_numbers():
    s0, s1 = replication_seed(11, 0), replication_seed(11, 1)
    assert s0 != s1 and s0 == replication_seed(11, 0)
    base = base_dict(workload={"arrivals": {"kind": "gamma", "rate_per_s": 8, "cv": 2}})
    pts = make_points([{"serving.replicas": 1}, {"serving.replicas": 3}], 2, root_seed=11)
    arrivals = {}
    for p in pts:
        sim = build(scenario_from_dict(apply_params(base, p.params)), p.seed)
        sim.env.run(until=30)
        arrivals[(p.params["serving.replicas"], p.replication)] = [(r.arrival_s, r.input_tokens) for r in sim.requests]
    assert arrivals[(1, 0)] == arrivals[(3, 0)]        # same replication: identical traffic
    assert arrivals[(1, 1)] == arrivals[(3, 1)]
    assert arrivals[(1, 0)] != arrivals[(1, 1)]        # other replication: other traffic


def test_sweep_writes_tidy_tables_and_rows_rerun_alone(tmp_path):
    p = sweep_file(tmp_path, {"axes": {"workload.arrivals.rate_per_s": [2, 6], "serving.replicas": [1, 2]},
                              "replications": 2})
    out = tmp_path / "out"
    assert cmd_sweep(args_for(p, out)) == 0
    df = pd.read_parquet(out / "sweep.parquet")
    assert len(df) == 8 and set(df["replication"]) == {0, 1}
    assert {"workload.arrivals.rate_per_s", "serving.replicas", "seed", "root_seed", "ttft_s_p99",
            "usd_per_m_output_tokens", "error"} <= set(df.columns)
    assert pd.read_csv(out / "sweep.csv").shape[0] == 8
    agg = pd.read_parquet(out / "aggregate.parquet")
    assert len(agg) == 4 and "ttft_s_p99_ci95" in agg and (agg["replications"] == 2).all()
    # A row re-run alone from its stored seed gives the same figures.
    row = df.iloc[5]
    from sim import run
    sc = scenario_from_dict(apply_params(base_dict(duration_s=20.0), {
        "workload.arrivals.rate_per_s": int(row["workload.arrivals.rate_per_s"]),
        "serving.replicas": int(row["serving.replicas"])}))
    again = run(sc, seed=int(row["seed"])).summary
    assert again["ttft_s_p99"] == pytest.approx(row["ttft_s_p99"], rel=1e-12)
    assert (out / "pareto.png").stat().st_size > 0


def test_axes_over_lists_mappings_and_null(tmp_path):
    """A speculative block switched on and off, and per-position acceptances of different lengths,
    run, aggregate, resume and print like scalar axes (their cells are JSON text)."""
    eagle = {"method": "eagle", "k": 2, "acceptance": {"rate": 0.6}}
    p = sweep_file(tmp_path, {"axes": {"speculative": [None, eagle]}, "replications": 1})
    out = tmp_path / "out"
    assert cmd_sweep(args_for(p, out)) == 0
    agg = pd.read_parquet(out / "aggregate.parquet")
    assert agg["speculative"].isna().sum() == 1
    assert json.dumps(eagle, sort_keys=True, separators=(", ", ": ")) in set(agg["speculative"])
    assert cmd_sweep(args_for(p, out)) == 0                 # resumed from the stored rows
    # null beside numbers, and a table whose keys mix numbers and text
    mixed = sweep_file(tmp_path, {"axes": {"speculative.per_request_concentration": [None, 5.0],
                                           "speculative.acceptance": [{"mean_accepted_length": {1: 1.6, "2": 2.0}}]},
                                  "replications": 1}, speculative={**eagle, "k": 2})
    assert cmd_sweep(args_for(mixed, tmp_path / "out3")) == 0
    assert cmd_sweep(args_for(mixed, tmp_path / "out3")) == 0
    zipped = sweep_file(tmp_path, {"zip": {"speculative.k": [1, 2],
                                           "speculative.acceptance.per_position": [[0.5], [0.5, 0.4]]},
                                   "replications": 1},
                        speculative={"method": "eagle", "k": 1, "acceptance": {"per_position": [0.5]}})
    out2 = tmp_path / "out2"
    assert cmd_sweep(args_for(zipped, out2)) == 0
    agg2 = pd.read_parquet(out2 / "aggregate.parquet")
    assert list(agg2["speculative.acceptance.per_position"]) == ["[0.5]", "[0.5, 0.4]"]
    assert (agg2["spec_k_mean"] == [1, 2]).all()


class Crash(Exception):
    pass


def test_resume_after_crash_loses_and_duplicates_nothing(tmp_path):
    p = sweep_file(tmp_path, {"axes": {"workload.arrivals.rate_per_s": [1, 2, 3, 4, 5]}, "replications": 2})
    out = tmp_path / "out"
    seen = []

    def crash_after_three(row):
        seen.append(row["point_id"])
        if len(seen) == 3:
            raise Crash

    with pytest.raises(Crash):
        cmd_sweep(args_for(p, out), after_row=crash_after_three)
    files = sorted((out / "points").glob("*.json"))
    assert len(files) == 3
    mtimes = {f.name: f.stat().st_mtime_ns for f in files}
    (out / "points" / ".stray.json.tmp").write_text("{half", encoding="utf-8")  # a torn temp file
    ran = []
    assert cmd_sweep(args_for(p, out), after_row=lambda r: ran.append(r)) == 0
    assert len(ran) == 7                                   # only the missing points ran
    assert {f.name: f.stat().st_mtime_ns for f in files} == mtimes
    df = pd.read_parquet(out / "sweep.parquet")
    assert len(df) == 10 and not df.duplicated(["point_id", "replication"]).any()
    assert cmd_sweep(args_for(p, out), after_row=lambda r: ran.append(r)) == 0
    assert len(ran) == 7                                   # a third run has nothing to do
    with pytest.raises(InputError, match="different sweep"):
        cmd_sweep(args_for(sweep_file(tmp_path, {"axes": {"serving.replicas": [1, 2]}}), out))


def test_killed_sweep_process_resumes(tmp_path):
    p = sweep_file(tmp_path, {"axes": {"workload.arrivals.rate_per_s": list(range(1, 25))}}, duration_s=120.0)
    out = tmp_path / "out"
    cmd = [*RUN, "sweep", str(p), "--out", str(out), "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "CI": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "points").glob("*.json"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(list((out / "points").glob("*.json")))
    assert before >= 2
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "CI": "1"})
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(out / "sweep.parquet")
    assert len(df) == 24 and df["point_id"].is_unique and (df["error"] == "").all()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc and pgrep")
def test_workers_exit_when_the_sweep_process_is_killed(tmp_path):
    """SIGKILL of the sweep's process cannot stop its pool: the workers notice and exit."""
    p = sweep_file(tmp_path, {"axes": {"workload.arrivals.rate_per_s": [1, 2, 3, 4]}}, duration_s=3000.0)
    cmd = [*RUN, "sweep", str(p), "--out", str(tmp_path / "out"), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "CI": "1"})
    deadline = time.time() + 60
    workers: list[int] = []
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.2)
        workers = [c for c in _children(proc.pid) if "python" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")]
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)


def test_failing_point_is_recorded_and_others_finish(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n"
                    "2023-11-16 18:15:47.68,100,10\n", encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,oops,44\n", encoding="utf-8")
    d = base_dict(duration_s=20.0)
    d["workload"] = {"trace": {"format": "azure", "path": "good.csv"}}
    d["sweep"] = {"zip": {"workload.trace.path": ["good.csv", "bad.csv"]}}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(d), encoding="utf-8")
    out = tmp_path / "out"
    assert cmd_sweep(args_for(p, out)) == 1
    df = pd.read_parquet(out / "sweep.parquet").set_index("workload.trace.path")
    assert df.loc["good.csv", "error"] == "" and df.loc["good.csv", "requests_completed"] == 2
    assert "ContextTokens" in df.loc["bad.csv", "error"] and math.isnan(df.loc["bad.csv", "ttft_s_p50"])
    ran = []
    assert cmd_sweep(args_for(p, out), after_row=ran.append) == 1
    assert len(ran) == 1                      # the failed point is retried, the good one is not
    # The report of a sweep with a failed point: slo_met is still aggregated (bool once the failed
    # row is left out), the good point is the answer, the failed one is named as such.
    assert cmd_sweep(args_for(p, out, no_report=False)) == 1
    assert "slo_met_mean" in pd.read_parquet(out / "aggregate.parquet")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "failed in at least one replication" in html and "bad.csv" in html


def test_python_api_run_sweep_matches_cli(tmp_path):
    from sim.sweep import inline_executor, run_sweep

    p = sweep_file(tmp_path, {"axes": {"serving.replicas": [1, 2]}, "replications": 2})
    sf = load_sweep(p)
    points = make_points(expand(sf.spec), sf.spec.replications, sf.root_seed)
    with inline_executor() as ex:
        table = run_sweep(sf.base, sf.base_dir, points, ex)
    assert list(zip(table["serving.replicas"], table["replication"], strict=True)) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert cmd_sweep(args_for(p, tmp_path / "o")) == 0
    cli = pd.read_parquet(tmp_path / "o" / "sweep.parquet")
    assert cli["ttft_s_p99"].tolist() == pytest.approx(table["ttft_s_p99"].tolist(), rel=1e-12)


def test_aggregate_mean_and_t_interval():
    df = pd.DataFrame({"point_id": ["a"] * 4 + ["b"] * 4, "x": [1] * 4 + [2] * 4, "replication": [0, 1, 2, 3] * 2,
                       "seed": 0, "root_seed": 0, "m": [1.0, 2.0, 3.0, 4.0, 10, 10, 10, 10], "error": ""})
    agg = aggregate(df, ["x"]).set_index("point_id")
    assert agg.loc["a", "m_mean"] == 2.5
    assert agg.loc["a", "m_ci95"] == pytest.approx(stats.t.ppf(0.975, 3) * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert agg.loc["b", "m_ci95"] == 0


def test_pareto_frontier_keeps_non_dominated_points():
    df = pd.DataFrame({"u": [10, 20, 30, 25, 5, 30], "g": [100, 90, 50, 40, 80, 20], "id": list("abcdef")})
    front = pareto_frontier(df, "u", "g")
    assert list(front["id"]) == ["a", "b", "c"]


def test_dask_local_cluster_equals_process_pool(tmp_path):
    pytest.importorskip("distributed")
    p = sweep_file(tmp_path, {"axes": {"workload.arrivals.rate_per_s": [2, 5], "serving.replicas": [1, 2]},
                              "replications": 2})
    assert cmd_sweep(args_for(p, tmp_path / "pool", workers=2)) == 0
    assert cmd_sweep(args_for(p, tmp_path / "dask", workers=2, dask="local")) == 0
    volatile = ["wall_s", "sim_requests_per_wall_s"]
    a = pd.read_parquet(tmp_path / "pool" / "sweep.parquet").drop(columns=volatile)
    b = pd.read_parquet(tmp_path / "dask" / "sweep.parquet").drop(columns=volatile)
    pd.testing.assert_frame_equal(a, b)
    manifest = json.loads((tmp_path / "dask" / "sweep.json").read_text())
    assert manifest["points"] == 8


def test_sweep_analysis_groups_configurations_by_non_load_axes():
    from sim.sweep import analyse

    spec = SweepSpec(axes={"serving.replicas": [1, 2], "workload.arrivals.rate_per_s": [1, 2, 4]}, replications=2)
    rows = []
    for rep in (1, 2):
        for rate in (1, 2, 4):
            for r in (0, 1):
                rows.append({"point_id": f"{rep}-{rate}", "replication": r, "seed": r, "root_seed": 0,
                             "serving.replicas": rep, "workload.arrivals.rate_per_s": rate, "error": "",
                             "output_tok_per_s_per_user_p50": 100.0 / rate, "total_tok_per_s_per_gpu": rate * 50.0 / rep})
    res = analyse(pd.DataFrame(rows), spec)
    assert res.config_params == ["serving.replicas"]          # the rate axis is a load knob, not a configuration
    assert sorted(res.aggregate["configuration"].unique()) == ["1", "2"]
    assert len(res.aggregate) == 6 and (res.aggregate["replications"] == 2).all()
    # Pareto in (speed per user, throughput per GPU): the one-replica points dominate.
    assert set(res.pareto["serving.replicas"]) == {1} and len(res.pareto) == 3
    assert res.failed.empty
