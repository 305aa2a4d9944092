"""Fuzzing the scenario schema through the CLI: a scenario file with one key replaced by a hostile
value (or removed, or an unknown key added) either runs, writing a complete result whose
invariants hold, or exits 2 with one line per problem and no traceback, writing nothing. Any other outcome (an
exception escaping `main`, a second line, a stray file) fails the test with the example that
caused it."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import yaml
from conftest import base_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.report.content import read_run_folder, run_report
from sim.report.render import render_html
from simcli.main import main

BASE = base_dict(
    duration_s=2.0,
    hardware={"gpu": "h100-sxm", "price_usd_per_gpu_h": 2.0},
    serving={"precision": {"weights": "bf16", "kv_cache": "bf16"}, "replicas": 1,
             "batching": {"max_num_seqs": 16, "max_num_batched_tokens": 2048, "max_waiting": 64},
             "kv_cache": {"block_tokens": 16, "watermark_fraction": 0.01},
             "frontend": {"tokenize_s": 0.001}},
    workload={"arrivals": {"kind": "poisson", "rate_per_s": 5.0},
              "input_tokens": {"kind": "lognormal", "mean": 300, "cv": 0.8},
              "output_tokens": {"kind": "fixed", "value": 20}},
    slo={"ttft_s": 1.0, "tpot_s": 0.1},
    cost={"electricity_usd_per_kwh": 0.1, "pue": 1.2},
    perf={"iteration_overhead_s": 0.001},
)

HOSTILE: list[Any] = [0, -1, 1, 2, 0.5, 0.999, 64, 1000, 1e300, -1e300, 1e29, 2 ** 63, 1e-300, math.inf, -math.inf, math.nan, True,
                      False, None, "", "abc", "[/]", "../x", [1], {"a": 1}, "x" * 300]


def leaf_paths(d: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(d, dict):
        out = [prefix] if prefix else []
        for k, v in d.items():
            out += leaf_paths(v, (*prefix, k))
        return out
    return [prefix]


PATHS = leaf_paths(BASE)


def mutate(path: tuple[str, ...], action: str, value: Any) -> dict:
    d = copy.deepcopy(BASE)
    node = d
    for k in path[:-1]:
        node = node[k]
    if action == "remove":
        del node[path[-1]]
    elif action == "add":
        target = node[path[-1]] if isinstance(node[path[-1]], dict) else node
        target["unknown_key"] = value
    else:
        node[path[-1]] = value
    return d


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), action=st.sampled_from(["replace"] * 8 + ["remove", "add"]),
       value=st.sampled_from(HOSTILE))
def test_a_mutated_scenario_runs_or_is_refused_cleanly(tmp_path_factory, capsys, path, action, value):
    work: Path = tmp_path_factory.mktemp("fuzz")
    data = mutate(path, action, value)
    scenario = work / "s.yaml"
    scenario.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    out = work / "out"
    rc = main(["run", str(scenario), "--quiet", "--no-report", "--out", str(out)])
    captured = capsys.readouterr()
    if rc == 2:
        # One line per problem, each naming the file (a mapping missing seven keys gives seven).
        lines = captured.err.splitlines()
        assert lines[0].startswith("error: ") and all(ln.startswith(str(scenario)) for ln in lines[1:]), captured.err
        assert "Traceback" not in captured.err
        assert sorted(p.name for p in work.iterdir()) == ["s.yaml"], "a refused run wrote files"
        return
    assert rc == 0, (rc, captured.err)
    # The report's text from whatever the run produced (its figures are drawn in test_report.py:
    # rasterizing them for every example would double this test's time).
    report = run_report(read_run_folder(out))
    assert report.title in render_html(report, {f"{ref.name}.png": b"" for ref in report.all_figures()})
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["requests_arrived"] == (summary["requests_completed"] + summary["requests_rejected"]
                                           + summary["requests_in_flight"])
    for key in ("gpu_busy_fraction", "kv_occupancy_mean", "slo_attainment"):
        v = summary[key]
        assert v is None or 0.0 <= v <= 1.0 + 1e-9, (key, v)
