"""Hostile inputs from the adversarial report (../shared/reviews/hostile-inputs-1.md): each gives
exit status 2 with one line naming the field, the value or the limit, no traceback, and nothing
written; or, where the input is legitimate, a run that finishes with the right numbers.
Finding ids (C2, H3, W5, ...) are the report's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import base_dict

from sim.runner import run
from sim.scenario import scenario_from_dict
from sim.workload import read_azure_trace
from simcli.main import main

TRACE_WORKLOAD = {"arrivals": None, "input_tokens": None, "output_tokens": None}


def refused(tmp_path: Path, capsys, data: dict | str, *args: str, command: str = "run") -> str:
    """Run the CLI on `data`; assert a clean refusal and return its message."""
    p = tmp_path / "s.yaml"
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if v is not None}
        if isinstance(data.get("workload"), dict):
            data["workload"] = {k: v for k, v in data["workload"].items() if v is not None}
        data = yaml.safe_dump(data)
    p.write_text(data, encoding="utf-8")
    before = sorted(tmp_path.rglob("*"))
    argv = [command, str(p), "--quiet", *args] + (["--workers", "1"] if command in ("sweep", "plan") else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(tmp_path.rglob("*")) == before
    return err


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# ---- numbers: C2, C3, H5, W3, W13 --------------------------------------------------------------

@pytest.mark.parametrize("key,value,needles", [
    ("duration_s", ".inf", ["duration_s", "finite"]),
    ("duration_s", "1e300", ["duration_s", "100000000"]),
    ("duration_s", "true", ["duration_s", "expected a number, got true"]),
    ("workload.arrivals.rate_per_s", ".inf", ["rate_per_s", "finite"]),
    ("workload.arrivals.rate_per_s", "1e300", ["rate_per_s", "100000"]),
    ("workload.input_tokens", "{kind: lognormal, mean: 1e300, cv: 1}", ["input_tokens", "mean", "10000000"]),
    ("workload.input_tokens", "{kind: lognormal, mean: 500, cv: .inf}", ["input_tokens", "cv", "finite"]),
    ("workload.output_tokens", "{kind: fixed, value: 1e19}", ["output_tokens", "value"]),
    ("serving.replicas", "100000000000000000000000000000", ["serving.replicas", "20000"]),
    ("serving.replicas", "true", ["replicas", "expected a number, got true"]),
    ("serving.batching.chunked_prefill", "0", ["chunked_prefill", "expected true or false, got 0"]),
    ("hardware.overrides.hbm_gb", "1.0e300", ["hbm_gb", "100000"]),
    ("perf.iteration_overhead_s", "1.0e308", ["iteration_overhead_s", "10"]),
    ("hardware.price_usd_per_gpu_h", ".inf", ["price_usd_per_gpu_h", "finite"]),
    ("cost.pue", ".inf", ["cost.pue", "finite"]),
    ("serving.frontend.schedule_s", ".inf", ["schedule_s", "finite"]),
    ("hardware.overrides.tdp_w", ".inf", ["tdp_w", "finite"]),
    ("workload.arrivals", "{kind: closed_loop, clients: 100000000}", ["clients", "100000"]),
    ("workload.arrivals", "{kind: offline, requests: 100000000}", ["requests", "10000000"]),
    ("workload.arrivals", "{kind: poisson, rate_per_s: 100000}", ["about 6,000,000,000 requests", "10,000,000"]),
    ("workload.arrivals", "{kind: piecewise, segments: [{duration_s: 1.0e-300, rate_per_s: 5}]}",
     ["segments.0.duration_s", "0.001"]),
    ("workload.arrivals", "{kind: piecewise, segments: [{duration_s: 0.001, rate_per_s: 5}]}",
     ["segments", "60,000", "1,000,000"]),
])
def test_numbers_out_of_range_are_refused(tmp_path, capsys, key, value, needles):
    d = base_dict(duration_s=60.0)
    if key == "workload.arrivals":
        d["duration_s"] = 60_000.0
    err = refused(tmp_path, capsys, d, "--set", f"{key}={value}")
    for n in needles:
        assert n in err, (n, err)


def _write(tmp_path: Path, d: dict) -> str:
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump(d), encoding="utf-8")
    return str(p)


# ---- traces and length files: C2, C5, W3, W9 ---------------------------------------------------

def azure(tmp_path: Path, rows: str) -> dict:
    p = tmp_path / "a.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows, encoding="utf-8")
    return base_dict(workload={"trace": {"format": "azure", "path": str(p)}, **TRACE_WORKLOAD})


def mooncake(tmp_path: Path, rows: str) -> dict:
    p = tmp_path / "m.jsonl"
    p.write_text(rows, encoding="utf-8")
    return base_dict(workload={"trace": {"format": "mooncake", "path": str(p)}, **TRACE_WORKLOAD})


@pytest.mark.parametrize("rows,needles", [
    ("2023-11-16 18:15:46.68,1e300,44\n", ["line 2", "ContextTokens", "10,000,000", "1e300"]),
    ("2023-11-16 18:15:46.68,100,1e19\n", ["line 2", "GeneratedTokens", "1e19"]),
    ("2023-11-16 18:15:46.68,100,inf\n", ["line 2", "GeneratedTokens", "inf"]),
    ("12/11/2023 18:15:46,100,10\n13/11/2023 18:15:47,100,10\n", ["line 2", "TIMESTAMP", "ISO 8601", "12/11/2023"]),
])
def test_bad_azure_rows(tmp_path, capsys, rows, needles):
    err = refused(tmp_path, capsys, azure(tmp_path, rows))
    for n in needles:
        assert n in err, (n, err)


@pytest.mark.parametrize("row,needles", [
    ('{"timestamp": NaN, "input_length": 10, "output_length": 5}', ["line 1", "timestamp", "nan"]),
    ('{"timestamp": 0, "input_length": Infinity, "output_length": 5}', ["line 1", "input_length", "inf"]),
    ('{"timestamp": 0, "input_length": 1e300, "output_length": 5}', ["line 1", "input_length", "1e+300"]),
    ('{"timestamp": 0, "input_length": 100000000000000000000, "output_length": 5}', ["line 1", "input_length"]),
])
def test_bad_mooncake_rows(tmp_path, capsys, row, needles):
    err = refused(tmp_path, capsys, mooncake(tmp_path, row + "\n"))
    for n in needles:
        assert n in err, (n, err)


def test_empirical_lengths_beyond_the_limit_are_refused(tmp_path, capsys):
    (tmp_path / "len.csv").write_text("len\n100\n1e19\n", encoding="utf-8")
    d = base_dict(workload={"output_tokens": {"kind": "empirical", "path": str(tmp_path / "len.csv"), "column": "len"}})
    err = refused(tmp_path, capsys, d)
    assert "line 3" in err and "'len'" in err and "10,000,000" in err


def test_azure_time_zones_mixed_or_not_read_as_utc(tmp_path):
    p = tmp_path / "tz.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.009930+00:00,100,10\n"
                 "2024-05-10 00:00:01.5,200,20\n2024-05-10 02:00:03+02:00,300,30\n", encoding="utf-8")
    df = read_azure_trace(p)
    assert np.allclose(df["arrival_s"], [0.0, 1.49007, 2.99007])
    assert df["input_tokens"].tolist() == [100, 200, 300]


# ---- step tables: C4, W4 -----------------------------------------------------------------------

STEP_ROWS = [(1, 100, 0, 0.010), (1, 100, 512, 0.030), (1, 1000, 0, 0.012), (1, 1000, 512, 0.032),
             (2, 100, 0, 0.011), (2, 100, 512, 0.031), (2, 1000, 0, 0.013), (2, 1000, 512, 0.033)]


def step_table(tmp_path: Path, rows) -> dict:
    p = tmp_path / "st.csv"
    p.write_text("decode_seqs,context_tokens,prefill_tokens,step_time_s\n"
                 + "".join(f"{b},{c},{q},{t}\n" for b, c, q, t in rows), encoding="utf-8")
    return base_dict(duration_s=20.0, perf={"step_table": str(p)})


def test_a_step_table_that_falls_with_size_is_refused(tmp_path, capsys):
    rows = [(b, c, q, t if b == 1 else t - 0.002) for b, c, q, t in STEP_ROWS]
    err = refused(tmp_path, capsys, step_table(tmp_path, rows))
    assert "step_time_s falls" in err and "decode_seqs" in err and "line" in err


def test_a_step_table_holding_inf_is_refused(tmp_path, capsys):
    rows = [*STEP_ROWS[:-1], (2, 1000, 512, "inf")]
    err = refused(tmp_path, capsys, step_table(tmp_path, rows))
    assert "line 9" in err and "finite" in err


def test_a_good_step_table_never_gives_a_step_shorter_than_its_shortest(tmp_path):
    """Below the grid (context under 100, one sequence) the edge value holds, so time advances."""
    sc = scenario_from_dict(step_table(tmp_path, STEP_ROWS), base_dir=str(tmp_path))
    res = run(sc, seed=1)
    it = res.iterations
    assert res.summary["requests_completed"] > 0
    assert ((it["t_end_s"] - it["t_start_s"]) / it["steps"] >= 0.010 - 1e-12).all()


# ---- YAML: W5, H4 --------------------------------------------------------------------------

def test_duplicate_keys_are_refused(tmp_path, capsys):
    text = yaml.safe_dump(base_dict(serving={"replicas": 8})) + "serving:\n  router: round_robin\n"
    err = refused(tmp_path, capsys, text)
    assert "duplicate key 'serving'" in err and "line" in err


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_billion_laughs_is_refused_at_once(tmp_path, capsys, command):
    lines = ['x0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        lines.append(f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = yaml.safe_dump(base_dict()) + "\n".join(lines) + "\nsweep: {axes: {serving.replicas: [1]}, replications: 1}\n"
    err = refused(tmp_path, capsys, text, command=command)
    assert "aliases" in err and "line" in err


# ---- closed-loop retries: H2 ---------------------------------------------------------------------

def test_rejected_closed_loop_clients_back_off():
    """1,000 clients on a queue of 10 (the report's 2 million requests in 2 s): each rejected
    client waits 10 ms, doubling to 1 s, so 2 s see at most 8 tries per client."""
    sc = scenario_from_dict(base_dict(
        duration_s=2.0, serving={"batching": {"max_num_seqs": 8, "max_num_batched_tokens": 8192, "max_waiting": 10}},
        workload={"arrivals": {"kind": "closed_loop", "clients": 1000},
                  "input_tokens": {"kind": "fixed", "value": 1000}, "output_tokens": {"kind": "fixed", "value": 100}}))
    res = run(sc, seed=1)
    s = res.summary
    assert s["requests_rejected"] > 1000            # the queue really is full
    assert len(res.requests) < 1000 * 9


# ---- progress on a terminal: H1 ------------------------------------------------------------------

def test_progress_follows_events_and_changes_nothing():
    """A 1 ms arrival window with a long drain: reporting progress must not walk the drain in
    steps of duration_s / 100 (the report's minutes-long hang), nor change a figure."""
    from sim.runner import build, execute

    sc = scenario_from_dict(base_dict(
        duration_s=0.001, workload={"arrivals": {"kind": "offline", "requests": 1},
                                    "input_tokens": {"kind": "fixed", "value": 1000},
                                    "output_tokens": {"kind": "fixed", "value": 20000}}))
    calls: list[float] = []
    res = execute(build(sc, 1), progress=calls.append)
    ref = execute(build(sc, 1))
    assert 1 <= len(calls) <= 3 and calls == sorted(calls)
    timing = {"wall_s", "sim_requests_per_wall_s"}
    assert {k: v for k, v in res.summary.items() if k not in timing} == \
        {k: v for k, v in ref.summary.items() if k not in timing}


# ---- calibrate: C8, W10 ---------------------------------------------------------------------------

CAL_HEAD = ("id,kind,model,gpu,tp,weights,kv_cache,compute,decode_seqs,context_tokens,prefill_tokens,step_time_s,"
            "input_tokens,output_tokens,requests,output_tok_per_s_per_gpu\n")


@pytest.mark.parametrize("row,needles", [
    ("a,step,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,1e300,1e300,0,0.012,,,,", ["decode_seqs", "1e300"]),
    ("a,step,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,0,0,0,0.012,,,,", ["needs work"]),
    ("a,throughput,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,,,,,1000,1000,0,5000", ["requests", "from 1"]),
    ("a,step,llama-3.1-8b,h100-sxm,1.5,bf16,bf16,bf16,64,1000,0,0.012,,,,", ["'tp'", "an integer", "1.5"]),
    ("a,step,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,64,1000,0,1e30,,,,", ["step_time_s", "1e30"]),
    ("a,step,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,64,1000,0,1e-30,,,,", ["step_time_s", "1e-30"]),
])
def test_calibrate_refuses_measurements_it_cannot_model(tmp_path, capsys, row, needles):
    (tmp_path / "m.csv").write_text(CAL_HEAD + row + "\n", encoding="utf-8")
    assert main(["calibrate", "m.csv", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    for n in needles:
        assert n in err, (n, err)
    assert not (tmp_path / "results").exists()


def test_calibrate_says_when_a_fit_hits_a_bound(tmp_path, capsys):
    """A step 100x slower than the hardware allows: the efficiency lands on its floor, and the
    printed notes say so."""
    (tmp_path / "m.csv").write_text(
        CAL_HEAD + "a,step,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,1,1000,0,0.5,,,,\n", encoding="utf-8")
    assert main(["calibrate", "m.csv", "--params", "hbm_bw_efficiency", "--out", "p.yaml"]) == 0
    out = capsys.readouterr().out
    assert "sits at its bound" in out and "hbm_bw_efficiency" in out


# ---- rich markup in user strings: C9 ----------------------------------------------------------------

def test_markup_in_names_is_printed_as_written(tmp_path, capsys):
    d = base_dict(duration_s=2.0)
    assert main(["run", _write(tmp_path, d), "--set", 'hardware.overrides.name="my-gpu [/] [int4-awq]"']) == 0
    assert "my-gpu [/] [int4-awq]" in capsys.readouterr().out
    (tmp_path / "m.csv").write_text(
        CAL_HEAD + "[/]x,step,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,64,1000,0,0.012,,,,\n", encoding="utf-8")
    assert main(["calibrate", "m.csv", "--out", "p.yaml"]) == 0
    assert "[/]x" in capsys.readouterr().out


# ---- plan: W6 ----------------------------------------------------------------------------------------

def test_plan_refuses_a_load_its_knob_cannot_take(tmp_path, capsys):
    d = base_dict(workload={"arrivals": {"kind": "closed_loop", "clients": 8}})
    err = refused(tmp_path, capsys, d, "--rate", "2.5", command="plan")
    assert "clients" in err and "2.5" in err and "--rate" in err


def test_plan_stops_with_exit_1_when_a_simulation_fails(tmp_path, capsys, monkeypatch):
    """A crashing evaluation is not an SLO miss: the plan says which one failed and why."""
    import sim.runner

    def crash(*_a, **_k):
        raise RuntimeError("replica 0: boom")

    monkeypatch.setattr(sim.runner, "run", crash)
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(base_dict(duration_s=5.0)), encoding="utf-8")
    assert main(["plan", str(p), "--quiet", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: plan: candidate 0") and "serving.replicas=1" in err and "RuntimeError: replica 0: boom" in err
    assert not (tmp_path / "results").exists()


# ---- sweep aggregates: W7 -------------------------------------------------------------------------

def test_sweep_aggregates_keep_non_finite_replications():
    """The report's rate-44 point: two of four replications had no SLO-meeting token ($inf).
    Its mean is inf, not the mean of the two others; an undefined (NaN) value is left out and
    counted."""
    import pandas as pd

    from sim.sweep import aggregate

    rows = pd.DataFrame({"point_id": ["p"] * 4, "rate": [44.0] * 4, "replication": [0, 1, 2, 3], "error": [""] * 4,
                         "usd_per_m_slo_output_tokens": [np.inf, np.inf, 7606.8, 2996.6],
                         "ttft_s_p99": [1.0, np.nan, 3.0, 2.0], "gpus": [2.0] * 4})
    agg = aggregate(rows, ["rate"]).iloc[0]
    assert agg["replications"] == 4
    assert agg["usd_per_m_slo_output_tokens_mean"] == np.inf and np.isnan(agg["usd_per_m_slo_output_tokens_ci95"])
    assert agg["ttft_s_p99_mean"] == pytest.approx(2.0) and agg["ttft_s_p99_n"] == 3
    assert agg["gpus_mean"] == 2.0 and "gpus_n" not in agg


# ---- latency percentiles under overload: W14 --------------------------------------------------------

def test_requests_left_out_of_the_percentiles_are_reported_beside_them(tmp_path, capsys):
    """Overload with a short queue: most requests are rejected. The share left out of the
    percentiles is in the summary and printed right after them, with SLO attainment."""
    d = base_dict(duration_s=20.0, serving={"batching": {"max_num_seqs": 4, "max_num_batched_tokens": 4096,
                                                         "max_waiting": 2}},
                  workload={"arrivals": {"kind": "poisson", "rate_per_s": 40.0},
                            "input_tokens": {"kind": "fixed", "value": 500},
                            "output_tokens": {"kind": "fixed", "value": 200}})
    s = run(scenario_from_dict(d), seed=1).summary
    left_out = (s["requests_rejected"] + s["requests_in_flight"]) / s["requests_arrived"]
    assert s["not_served_fraction"] == pytest.approx(left_out) and left_out > 0.5
    assert main(["run", _write(tmp_path, d)]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = next(k for k, line in enumerate(lines) if "E2E latency" in line)
    assert "rejected or unfinished" in lines[i + 1] and f"{left_out:.3f}" in lines[i + 1]
    assert "SLO attainment" in lines[i + 2]


# ---- small things: W13 -------------------------------------------------------------------------------

def test_an_azure_row_with_an_extra_field_names_the_line(tmp_path, capsys):
    err = refused(tmp_path, capsys, azure(tmp_path, "2023-11-16 18:15:46,100,10\n2023-11-16 18:15:47,100,10,extra\n"))
    assert "line 3" in err and "saw 4" in err


def test_hardware_overrides_merge_into_nested_specs(tmp_path):
    d = base_dict(duration_s=2.0, hardware={"gpu": "h100-sxm", "overrides": {"tflops": {"fp8": 3000}}})
    sc = scenario_from_dict(d)
    assert sc.hardware.gpu.tflops.fp8 == 3000 and sc.hardware.gpu.tflops.bf16 == 989


def test_set_with_an_empty_key_part_names_the_flag(tmp_path, capsys):
    err = refused(tmp_path, capsys, base_dict(), "--set", "a..b=1")
    assert err.startswith("error: --set a..b")


def test_a_step_table_with_inf_on_an_axis_is_refused(tmp_path, capsys):
    rows = [(b, "inf" if c == 1000 else c, q, t) for b, c, q, t in STEP_ROWS]
    err = refused(tmp_path, capsys, step_table(tmp_path, rows))
    assert "context_tokens" in err and "finite" in err


@pytest.mark.parametrize("rows", ["2023-11-16 18:15:46,100,10,extra\n2023-11-16 18:15:47,100,10\n",
                                  "2023-11-16 18:15:46,100,10\n2023-11-16 18:15:47,100,10,extra\n"])
def test_a_csv_row_longer_than_the_header_is_refused_wherever_it_is(tmp_path, capsys, rows):
    err = refused(tmp_path, capsys, azure(tmp_path, rows))
    assert "saw 4" in err
    (tmp_path / "m.csv").write_text(CAL_HEAD + "a,step,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,64,1000,0,0.012,,,,,extra\n")
    assert main(["calibrate", "m.csv", "--quiet"]) == 2
    assert "saw 17" in capsys.readouterr().err


# ---- plan and sweep sizes: N5, N6 ----------------------------------------------------------------

def test_the_load_search_stops_at_the_schema_bound():
    """A deployment that meets the SLO at any load: the highest load is the bound, reached in a
    few doublings, and no evaluation asks for more."""
    from sim.plan import load_knob, max_load

    asked: list[float] = []

    def always(v: float):
        asked.append(v)
        return [{"error": "", "slo_met": True}]

    knob = load_knob(scenario_from_dict(base_dict(duration_s=1000.0)))
    assert knob.maximum == 10_000.0                     # 10 million requests over 1,000 s
    s = max_load(always, start=1000.0, integer=False, rel_tol=0.05, max_evaluations=40, maximum=knob.maximum)
    assert s.answer == knob.maximum and max(asked) == knob.maximum and len(asked) <= 6


def test_plan_max_replicas_is_bounded(tmp_path, capsys):
    err = refused(tmp_path, capsys, base_dict(), "--max-replicas", "1000000", command="plan")
    assert "max_replicas" in err and "20000" in err


@pytest.mark.parametrize("sweep,needle", [
    ({"axes": {f"serving.frontend.{k}": [0.0] * 40 for k in ("tokenize_s", "schedule_s", "detokenize_s")}
      | {"workload.arrivals.rate_per_s": [1.0] * 40}}, "2,560,000 simulations"),
    ({"axes": {"serving.replicas": [1]}, "replications": 1_000_000_000}, "replications"),
])
def test_sweeps_too_large_to_expand_are_refused(tmp_path, capsys, sweep, needle):
    d = base_dict()
    d["sweep"] = sweep
    err = refused(tmp_path, capsys, d, command="sweep")
    assert needle in err


def test_markup_in_calibrate_params_is_not_interpreted(tmp_path, capsys):
    (tmp_path / "m.csv").write_text(CAL_HEAD + "a,step,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,64,1000,0,0.012,,,,\n")
    assert main(["calibrate", "m.csv", "--params", "[/],hbm_bw_efficiency", "--out", "p.yaml"]) == 2
    assert "[/]" in capsys.readouterr().err


def test_attention_precision_the_gpu_lacks_is_refused(tmp_path, capsys):
    err = refused(tmp_path, capsys, base_dict(hardware={"gpu": "a100-80g"},
                                              serving={"precision": {"attention": "fp8"}}))
    assert "serving.precision.attention='fp8'" in err and "a100-80g" in err
    err = refused(tmp_path, capsys, base_dict(serving={"precision": {"attention": "fp4"}}))
    assert "attention" in err
