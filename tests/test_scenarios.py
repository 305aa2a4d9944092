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
