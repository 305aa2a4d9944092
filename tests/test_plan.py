"""Capacity planning: search logic, load knobs, and known answers from an M/D/c-like setting."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import ROOT, base_dict, step_model, step_s

from sim.errors import InputError
from sim.perf import Chunk
from sim.plan import load_knob, max_load, meets, min_replicas
from sim.scenario import scenario_from_dict
from simcli.plan_cmd import cmd_plan

RUN = [sys.executable, str(ROOT / "run.py")]


def fake(pred):
    return lambda v: [{"error": "", "slo_met": pred(v)}]


@pytest.mark.parametrize("need", [1, 2, 3, 7, 8, 13, 64])
def test_min_replicas_finds_threshold(need):
    s = min_replicas(fake(lambda n: n >= need), 64)
    assert s.answer == need
    assert len(s.evaluations) <= 2 * 7 + 1
    assert min_replicas(fake(lambda n: False), 16).answer is None


@pytest.mark.parametrize("limit", [0.3, 3.7, 10.0, 55.5])
def test_max_load_brackets_within_tolerance(limit):
    s = max_load(fake(lambda v: v <= limit), start=10.0, integer=False, rel_tol=0.02, max_evaluations=40)
    assert s.answer <= limit
    assert s.answer >= limit * 0.98 - 1e-9
    ints = max_load(fake(lambda v: v <= 37), start=4, integer=True, rel_tol=0.02, max_evaluations=40)
    assert ints.answer == 37


def test_meets_requires_every_replication():
    assert meets([{"error": "", "slo_met": True}] * 3)
    assert not meets([{"error": "", "slo_met": True}, {"error": "", "slo_met": False}])
    assert not meets([{"error": "RuntimeError: x", "slo_met": True}])
    assert not meets([])


def test_load_knobs():
    assert load_knob(scenario_from_dict(base_dict())).path == "workload.arrivals.rate_per_s"
    cl = scenario_from_dict(base_dict(workload={"arrivals": {"kind": "closed_loop", "clients": 9}}))
    assert (load_knob(cl).path, load_knob(cl).integer, load_knob(cl).value) == ("workload.arrivals.clients", True, 9)
    tr = base_dict()
    tr["workload"] = {"trace": {"format": "azure", "path": "bundled:AzureLLMInferenceTrace_conv.csv"}}
    assert load_knob(scenario_from_dict(tr)).path == "workload.trace.rate_scale"
    pw = scenario_from_dict(base_dict(workload={"arrivals": {"kind": "piecewise",
                                                             "segments": [{"duration_s": 5, "rate_per_s": 1}]}}))
    with pytest.raises(InputError, match="piecewise"):
        load_knob(pw)
    off = scenario_from_dict(base_dict(workload={"arrivals": {"kind": "offline", "requests": 50}}))
    with pytest.raises(InputError, match="'offline' has no load knob"):
        load_knob(off)


@pytest.mark.parametrize("arrivals,needle", [
    ({"kind": "offline", "requests": 50}, "'offline' has no load knob"),
    ({"kind": "piecewise", "segments": [{"duration_s": 5, "rate_per_s": 1}]}, "'piecewise' has no single load knob"),
])
def test_plan_without_a_load_knob_is_a_clear_error(tmp_path, arrivals, needle):
    d = base_dict(workload={"arrivals": arrivals})
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(d), encoding="utf-8")
    r = subprocess.run([*RUN, "plan", str(p), "--workers", "1"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


INP, OUT = 200, 4


def mdc_scenario(tmp_path, plan: dict, rate_factor: float, replicas: int = 1) -> tuple:
    """Replicas that serve one request at a time with a deterministic service time D: an M/D/c queue."""
    # A short drain: an unstable configuration fails by its unfinished requests without
    # simulating an hour of backlog.
    d = base_dict(duration_s=240.0, warmup_s=30.0, drain_timeout_s=120.0)
    d["serving"] = {**d["serving"], "replicas": replicas, "router": "least_outstanding",
                    "batching": {"max_num_seqs": 1, "max_num_batched_tokens": 4096}}
    d["workload"]["input_tokens"] = {"kind": "fixed", "value": INP}
    d["workload"]["output_tokens"] = {"kind": "fixed", "value": OUT}
    step = step_model(scenario_from_dict(d))
    service_s = step_s(step, 0, 0, [Chunk(0, INP, True)]) + sum(step_s(step, 1, INP + j) for j in range(1, OUT))
    d["workload"]["arrivals"] = {"kind": "poisson", "rate_per_s": rate_factor / service_s}
    # Generous latency targets: only an unstable queue (arrival rate >= c / D) misses them.
    d["slo"] = {"ttft_s": 40 * service_s, "tpot_s": 10.0, "percentile": 99}
    d["plan"] = plan
    p = tmp_path / "mdc.yaml"
    p.write_text(yaml.safe_dump(d), encoding="utf-8")
    return p, service_s


def plan_args(path, out, **kw) -> argparse.Namespace:
    a = {"scenario": str(path), "rate": None, "max_rate": False, "replications": None, "max_replicas": None,
         "workers": 1, "dask": None, "out": out, "set": [], "quiet": True, "no_report": True}
    a.update(kw)
    return argparse.Namespace(**a)


def test_min_replicas_known_answer_mdc(tmp_path):
    # Offered load 3.5 servers' worth: 3 replicas are unstable, 4 serve it (rho = 0.875).
    p, _ = mdc_scenario(tmp_path, {"replications": 2, "max_replicas": 16}, rate_factor=3.5)
    out = tmp_path / "plan"
    assert cmd_plan(plan_args(p, out)) == 0
    plan = pd.read_csv(out / "plan.csv")
    assert plan.loc[0, "min_replicas"] == 4
    ev = pd.read_csv(out / "evaluations.csv")
    tried = ev.groupby("value")["met"].first()
    assert not tried[3] and tried[4]
    answer = json.loads((out / "plan.json").read_text())
    assert answer["mode"] == "min_replicas" and answer["cheapest_candidate"] == 0


def test_max_rate_known_answer_mdc(tmp_path):
    # Two single-sequence replicas serve at most 2 / D requests per second.
    p, service_s = mdc_scenario(tmp_path, {"replications": 1, "rate_tolerance": 0.03}, rate_factor=0.5, replicas=2)
    out = tmp_path / "plan"
    assert cmd_plan(plan_args(p, out, max_rate=True)) == 0
    plan = pd.read_csv(out / "plan.csv")
    capacity = 2 / service_s
    assert 0.8 * capacity <= plan.loc[0, "max_load"] <= capacity
    assert plan.loc[0, "max_load_per_replica"] == pytest.approx(plan.loc[0, "max_load"] / 2)


def test_cheapest_candidate_is_chosen(tmp_path):
    d = base_dict(duration_s=120.0, warmup_s=10.0, slo={"ttft_s": 1.0, "tpot_s": 0.05})
    d["plan"] = {"rate": 10, "replications": 1, "max_replicas": 8,
                 "candidates": [{"hardware.gpu": "h100-sxm"}, {"hardware.gpu": "h100-sxm",
                                                               "hardware.price_usd_per_gpu_h": 0.5}]}
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(d), encoding="utf-8")
    out = tmp_path / "o"
    assert cmd_plan(plan_args(p, out)) == 0
    plan = pd.read_csv(out / "plan.csv")
    assert plan.loc[0, "min_replicas"] == plan.loc[1, "min_replicas"]
    assert json.loads((out / "plan.json").read_text())["cheapest_candidate"] == 1


@pytest.mark.parametrize("plan,needle", [({"replications": 0}, "plan.replications"),
                                         ({"candidates": [{"hardware.gpu": "nope"}]}, "plan.candidates[0]"),
                                         ({"colour": "red"}, "plan.colour")])
def test_bad_plan_blocks(tmp_path, plan, needle):
    d = base_dict()
    d["plan"] = plan
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(d), encoding="utf-8")
    r = subprocess.run([*RUN, "plan", str(p), "--out", str(tmp_path / "o"), "--workers", "1"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_plan_python_api_returns_the_answer(tmp_path):
    from sim.plan import load_plan, plan
    from sim.sweep import inline_executor

    p, _ = mdc_scenario(tmp_path, {"replications": 1, "max_replicas": 8}, rate_factor=1.5)
    pf = load_plan(p, overrides={"duration_s": 200.0, "warmup_s": 20.0}, spec_updates={"replications": 2})
    assert pf.spec.replications == 2
    seen = []
    with inline_executor() as ex:
        result = plan(pf, ex, on_evaluation=lambda c, k, v, met: seen.append((c, v, met)))
    assert result.mode == "min_replicas" and result.cheapest == 0
    assert result.candidates.loc[0, "min_replicas"] == 2       # 1.5 servers' worth of load
    assert (0, 2, True) in seen and (0, 1, False) in seen
    assert len(result.evaluations) == 2 * len(seen)
    assert result.answer()["load_knob"] == "workload.arrivals.rate_per_s"


def test_a_plan_refuses_to_compare_decode_pools_with_mixed_pools(tmp_path):
    """A decode pool leaves out its prefill GPUs: its $/M would always look cheaper."""
    from conftest import base_dict

    from sim.errors import InputError
    from sim.plan import load_plan

    d = {**base_dict(), "plan": {"candidates": [{}, {"serving.role": "decode"}]}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(InputError, match="mix serving.role values"):
        load_plan(tmp_path / "p.yaml")
