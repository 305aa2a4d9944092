"""Every scenario file in scenarios/ loads and runs (shortened), and its headline figures match
the golden values stored under tests/golden/ (refresh them on purpose with UPDATE_GOLDEN=1 after a
change that is meant to move them, and say why in the commit)."""

from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np
import pytest
from conftest import ROOT

from sim.runner import run
from sim.scenario import load_scenario

FILES = sorted((ROOT / "scenarios").glob("*.yaml"))
GOLDEN_DIR = ROOT / "tests" / "golden"
GOLDEN_KEYS = ("requests_arrived", "requests_completed", "requests_rejected", "ttft_s_p50", "ttft_s_p99",
               "tpot_s_p50", "tpot_s_p99", "e2e_s_p99", "output_tokens", "input_tokens", "total_tok_per_s_per_gpu",
               "gpu_busy_fraction", "batch_size_mean", "queue_len_mean", "kv_occupancy_mean", "slo_attainment",
               "goodput_output_tokens", "usd_per_m_output_tokens", "usd_per_m_slo_output_tokens",
               "joules_per_output_token")
#: Also pinned where the scenario decodes speculatively.
SPEC_KEYS = ("spec_mean_accepted_length", "spec_tokens_per_step", "spec_acceptance_rate", "spec_draft_time_share", "spec_verify_steps")


def numpy_series() -> str:
    """Random streams may change between NumPy releases; golden values hold for one series."""
    return ".".join(np.__version__.split(".")[:2])


def check_golden(name: str, summary: dict) -> None:
    path = GOLDEN_DIR / f"{name}.json"
    got = {k: summary[k] for k in GOLDEN_KEYS + (SPEC_KEYS if "spec_k" in summary else ())}
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(json.dumps({"numpy": numpy_series(), "summary": got}, indent=1, sort_keys=True) + "\n",
                        encoding="utf-8")
        return
    if not path.is_file():
        pytest.fail(f"no golden values for {name}: run UPDATE_GOLDEN=1 python -m pytest tests/test_scenarios.py")
    golden = json.loads(path.read_text(encoding="utf-8"))
    if golden["numpy"] != numpy_series():
        pytest.skip(f"golden values recorded with NumPy {golden['numpy']}, running {numpy_series()}: refresh them")
    for k, want in golden["summary"].items():
        have = got[k]
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(have), k
        else:
            assert have == pytest.approx(want, rel=1e-6), (name, k, have, want)


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
    # $/M by hand from the run's own pieces: provisioned GPU-hours x price / tokens sampled in W.
    assert s["usd_per_m_output_tokens"] == pytest.approx(
        s["gpu_seconds"] / 3600 * s["price_usd_per_gpu_h"] / res.requests["output_tokens_in_window"].sum() * 1e6)
    check_golden(path.stem, s)


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
                              set=["duration_s=40", "warmup_s=5"], quiet=True, no_report=False)
    assert cmd_sweep(args) == 0
    df = pd.read_parquet(tmp_path / "o" / "sweep.parquet")
    assert len(df) == len(expand(sf.spec)) * sf.spec.replications
    assert (df["error"] == "").all()
    _has_a_report(tmp_path / "o")


def _has_a_report(folder: pathlib.Path) -> None:
    """Every bundled sweep and plan produces its report (README tour), with the recommended (or
    closest) configuration's run and its sensitivity."""
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "<h2>The answer</h2>" in html and "<h2>Sensitivity</h2>" in html and "data:image/png;base64," in html
    assert (folder / "representative" / "sensitivity.parquet").is_file()


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_plan_file_runs(path, tmp_path):
    import argparse

    import pandas as pd

    from simcli.plan_cmd import cmd_plan

    args = argparse.Namespace(scenario=str(path), rate=None, max_rate=False, replications=1, max_replicas=8,
                              workers=1, dask=None, out=tmp_path / "o", set=["duration_s=60", "warmup_s=5"],
                              quiet=True, no_report=False)
    assert cmd_plan(args) == 0
    assert len(pd.read_csv(tmp_path / "o" / "plan.csv")) >= 1
    _has_a_report(tmp_path / "o")
