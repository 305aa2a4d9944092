"""The CLI: a good run writes its files; every bad input gives exit status 2, one clear message
naming the field and value, no traceback, and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, base_dict

RUN = [sys.executable, str(ROOT / "run.py")]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "1"}
    return subprocess.run([*RUN, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def write(tmp_path: Path, data, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return p


def test_run_writes_results(tmp_path):
    p = write(tmp_path, base_dict(duration_s=30.0, warmup_s=5.0))
    r = cli(str(p), "--seed", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / "results" / "t").iterdir())
    assert len(runs) == 1
    out = runs[0]
    assert sorted(f.name for f in out.iterdir()) == [
        ".token-factory-result", "iterations.parquet", "levels.parquet", "replicas.parquet", "report.html", "report.md",
        "report_figures", "requests.parquet", "run.json", "scenario.resolved.yaml", "sensitivity.csv",
        "sensitivity.parquet", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 4 and summary["requests_completed"] > 0
    req = pd.read_parquet(out / "requests.parquet")
    assert len(req) >= summary["requests_arrived"]
    resolved = yaml.safe_load((out / "scenario.resolved.yaml").read_text())
    assert resolved["hardware"]["gpu"]["hbm_bw_tb_s"] == 3.35  # catalog resolved into the file
    assert resolved["seed"] == 4                               # the seed used, not the file's (W12)
    assert "TTFT" in r.stdout and "$/M tokens" in r.stdout


def test_run_with_out_and_set(tmp_path):
    p = write(tmp_path, base_dict())
    r = cli(str(p), "--out", str(tmp_path / "o"), "--set", "duration_s=20", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["window_s"] == 20
    # Re-running into the same folder replaces it whole.
    r = cli(str(p), "--out", str(tmp_path / "o"), "--set", "duration_s=10", "--quiet", cwd=tmp_path)
    assert r.returncode == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["window_s"] == 10
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []


def _azure(tmp_path: Path, rows: str) -> str:
    p = tmp_path / "trace.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows, encoding="utf-8")
    return str(p)


def _mooncake(tmp_path: Path, rows: str) -> str:
    p = tmp_path / "trace.jsonl"
    p.write_text(rows, encoding="utf-8")
    return str(p)


BAD = {
    "unknown_key": (lambda t: {**base_dict(), "durration_s": 5}, ["durration_s"]),
    "unknown_nested_key": (lambda t: base_dict(serving={"batching": {"max_seqs": 5}}), ["serving.batching.max_seqs"]),
    "wrong_type": (lambda t: base_dict(duration_s="long"), ["duration_s", "'long'"]),
    "negative_value": (lambda t: base_dict(workload={"arrivals": {"kind": "poisson", "rate_per_s": -3}}),
                       ["workload.arrivals.rate_per_s", "-3"]),
    "unknown_gpu": (lambda t: base_dict(hardware={"gpu": "h900"}), ["hardware", "h900"]),
    "unknown_model": (lambda t: base_dict(model="llama-9"), ["model", "llama-9"]),
    "fp4_on_hopper": (lambda t: base_dict(serving={"precision": {"weights": "fp4"}}), ["fp4", "h100-sxm"]),
    "tp_not_dividing": (lambda t: base_dict(serving={"parallelism": {"tp": 3}}), ["tp=3"]),
    "does_not_fit": (lambda t: base_dict(model="llama-3.1-405b"), ["does not fit", "llama-3.1-405b"]),
    "malformed_yaml": (lambda t: "name: x\nseed: [1, 2\n", ["malformed YAML", "line"]),
    "not_a_mapping": (lambda t: "- 1\n- 2\n", ["mapping"]),
    "missing_trace": (lambda t: base_dict(workload={"trace": {"format": "azure", "path": "nope.csv"},
                                                    "arrivals": None, "input_tokens": None, "output_tokens": None}),
                      ["workload.trace.path", "nope.csv"]),
    "bad_azure_row": (lambda t: base_dict(workload={
        "trace": {"format": "azure", "path": _azure(t, "2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:47.1,abc,5\n")},
        "arrivals": None, "input_tokens": None, "output_tokens": None}), ["line 3", "ContextTokens", "'abc'"]),
    "bad_mooncake_row": (lambda t: base_dict(workload={
        "trace": {"format": "mooncake", "path": _mooncake(t, '{"timestamp": 0, "input_length": 5, "output_length": 3}\n'
                                                              '{"timestamp": 10, "input_length": -5, "output_length": 3}\n')},
        "arrivals": None, "input_tokens": None, "output_tokens": None}), ["line 2", "input_length", "-5"]),
    "broken_mooncake_json": (lambda t: base_dict(workload={
        "trace": {"format": "mooncake", "path": _mooncake(t, '{"timestamp": 0, "input_length": 5\n')},
        "arrivals": None, "input_tokens": None, "output_tokens": None}), ["line 1", "malformed JSON"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_with_one_clear_message(case, tmp_path):
    make, needles = BAD[case]
    data = make(tmp_path)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if v is not None}
        if "workload" in data:
            data["workload"] = {k: v for k, v in data["workload"].items() if v is not None}
    p = write(tmp_path, data)
    r = cli(str(p), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ")
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    assert len(r.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "results").exists()


def test_missing_scenario_file(tmp_path):
    r = cli("nope.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args,needle", [(["--seed", "x"], "--seed"), (["--set", "oops"], "--set"),
                                         (["--set", "serving.replicas=-1"], "serving.replicas")])
def test_bad_arguments(tmp_path, args, needle):
    p = write(tmp_path, base_dict())
    r = cli(str(p), *args, cwd=tmp_path)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()


def test_run_summary_and_a_parallelism_sweep_say_where_the_step_time_goes(tmp_path):
    """Every run's summary splits a decode step at the mean batch into its parts (ms); a sweep over
    the layout prints that split per point (issue 11: why one layout beats another)."""
    p = write(tmp_path, base_dict(duration_s=20.0, serving={"parallelism": {"tp": 1, "pp": 2}}))
    r = cli(str(p), "--out", str(tmp_path / "one"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "decode step at the mean batch" in r.stdout and "all-reduce / all-to-all / pipeline / fixed" in r.stdout
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["step_ms"] > 0 and summary["step_pipeline_ms"] >= 0 and summary["step_all_to_all_ms"] == 0
    parts = (max(summary["step_compute_ms"], summary["step_memory_ms"]) + summary["step_allreduce_ms"]
             + summary["step_pipeline_ms"] + summary["step_overhead_ms"])
    assert parts == pytest.approx(summary["step_ms"], rel=1e-9)       # the parts add up to the step
    sweep = {**base_dict(duration_s=20.0), "sweep": {"zip": {"serving.parallelism.tp": [1, 2],
                                                             "serving.parallelism.pp": [2, 1]}}}
    r = cli("sweep", str(write(tmp_path, sweep, "sw.yaml")), "--out", str(tmp_path / "sw"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "decode step at the mean batch, in its parts" in r.stdout and "pipeline" in r.stdout
    agg = pd.read_csv(tmp_path / "sw" / "aggregate.csv")
    assert (agg["step_compute_ms_mean"] > 0).all()


def test_pipeline_and_decode_pool_refusals_exit_2(tmp_path):
    spec = {"method": "eagle", "k": 2, "acceptance": {"mean_accepted_length": {2: 1.89}}}
    table = tmp_path / "t.csv"
    table.write_text("decode_seqs,context_tokens,prefill_tokens,step_time_s\n1,100,0,0.01\n")
    for over, message in (({"serving": {"parallelism": {"pp": 2}}, "speculative": spec}, "pp=2, speculative"),
                          ({"serving": {"parallelism": {"pp": 2}}, "perf": {"step_table": str(table)}},
                           "pp=2 (pipeline stages)"),
                          ({"serving": {"role": "prefill"}}, "serving.role")):
        r = cli(str(write(tmp_path, base_dict(**over))), "--out", str(tmp_path / "o"), cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "o").exists()
