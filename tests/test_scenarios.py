"""Every scenario file in scenarios/ loads and runs (shortened)."""

from __future__ import annotations

import pytest
from conftest import ROOT

from sim.runner import run
from sim.scenario import load_scenario

FILES = sorted((ROOT / "scenarios").glob("*.yaml"))


def test_there_are_scenarios():
    assert len(FILES) >= 5
    assert (ROOT / "scenarios" / "quickstart.yaml") in FILES


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario_runs(path):
    full = load_scenario(path)
    sc = load_scenario(path, overrides={"duration_s": min(full.duration_s, 90.0),
                                        "warmup_s": min(full.warmup_s, 10.0)})
    res = run(sc)
    s = res.summary
    assert s["requests_arrived"] > 0
    assert s["requests_completed"] > 0
    assert s["output_tok_per_s"] > 0
    assert 0 < s["usd_per_m_output_tokens"] < 1000


SWEEPS = [p for p in FILES if "\nsweep:" in p.read_text(encoding="utf-8")]
PLANS = [p for p in FILES if "\nplan:" in p.read_text(encoding="utf-8")]


def test_there_are_sweep_and_plan_examples():
    assert len(SWEEPS) >= 2 and len(PLANS) >= 1


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_file_runs(path, tmp_path):
    import argparse

    import pandas as pd

    from sim.sweep import expand, load_sweep
    from simcli.sweep_cmd import cmd_sweep

    sf = load_sweep(path)
    args = argparse.Namespace(sweep_file=str(path), workers=1, dask=None, out=tmp_path / "o", fresh=False,
                              set=["duration_s=40", "warmup_s=5"], quiet=True)
    assert cmd_sweep(args) == 0
    df = pd.read_parquet(tmp_path / "o" / "sweep.parquet")
    assert len(df) == len(expand(sf.spec)) * sf.spec.replications
    assert (df["error"] == "").all()


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_plan_file_runs(path, tmp_path):
    import argparse

    import pandas as pd

    from simcli.plan_cmd import cmd_plan

    args = argparse.Namespace(scenario=str(path), rate=None, max_rate=False, replications=1, max_replicas=8,
                              workers=1, dask=None, out=tmp_path / "o", set=["duration_s=60", "warmup_s=5"],
                              quiet=True)
    assert cmd_plan(args) == 0
    assert len(pd.read_csv(tmp_path / "o" / "plan.csv")) >= 1
