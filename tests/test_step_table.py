"""Measured step-time tables: exact at table points, consistent closed-form decode runs, jumps equal
to step-by-step simulation, extrapolation reported, bad tables rejected clearly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import base_dict, step_s

from sim.errors import InputError
from sim.perf import Chunk, DraftWork, LinearPath, StepShape, TableStepModel, read_step_table, steps_within
from sim.runner import build, execute
from sim.scenario import scenario_from_dict

B = [0, 1, 16, 64, 256]
C = [128, 1024, 4096, 16384]
P = [0, 512, 4096]


def step_time(b: int, c: int, p: int) -> float:
    # Deliberately not linear in anything, so interpolation is really exercised.
    return 0.002 + 1e-4 * b ** 0.8 + 2e-8 * b * c ** 1.1 + 3e-6 * p ** 1.05


@pytest.fixture
def table_csv(tmp_path):
    rows = ["decode_seqs,context_tokens,prefill_tokens,step_time_s"]
    rows += [f"{b},{c},{p},{step_time(b, c, p)!r}" for b, c, p in itertools.product(B, C, P)]
    path = tmp_path / "table.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def model(path) -> TableStepModel:
    return TableStepModel(read_step_table(path))


def test_exact_at_table_points(table_csv):
    m = model(table_csv)
    for b, c, p in itertools.product(B, C, P):
        chunks = [Chunk(0, p, True)] if p else []
        if b == 0 and p == 0:
            continue
        assert step_s(m, b, b * c, chunks) == pytest.approx(step_time(b, c, p), rel=1e-12)
    assert not m.coverage.extrapolated()


def test_interpolates_between_points(table_csv):
    m = model(table_csv)
    mid = step_s(m, 16, 16 * 2560, [])           # halfway between 1024 and 4096 context
    assert mid == pytest.approx((step_time(16, 1024, 0) + step_time(16, 4096, 0)) / 2, rel=1e-12)


def test_decode_run_closed_form_matches_steps(table_csv):
    m = model(table_csv)
    for batch in (1, 16, 40, 300):
        d = m.decode_run(batch)
        for first in (batch * 100, batch * 1000, batch * 4000, batch * 20000):
            n = 700
            path = LinearPath(float(first), float(batch))
            brute = sum(step_s(m, batch, first + j * batch) for j in range(n))
            assert d.run_s(path, n) == pytest.approx(brute, rel=1e-9)
            assert steps_within(d, path, n, d.run_s(path, 321)) == 321
            pieces = d.segments(path, n)            # the affine pieces sum to the same run
            assert sum(a * (hi - lo) + b * path.total(lo, hi) for lo, hi, a, b in pieces) == \
                pytest.approx(brute, rel=1e-9)


def test_several_query_tokens_per_sequence_count_as_prefill(table_csv):
    m = model(table_csv)
    # 8 sequences verifying 3 tokens each: 8 decode tokens plus 16 extra tokens looked up as prefill.
    direct = m.iteration_s(StepShape(8, 8 * 1024, 3))
    assert direct == pytest.approx(float(m._interp([[8, 1024, 16]])[0]), rel=1e-12)
    assert m.decode_run(8, 3).step_s(8 * 1024) == pytest.approx(direct, rel=1e-12)


def test_extrapolation_is_reported(table_csv):
    m = model(table_csv)
    step_s(m, 300, 300 * 30000)
    ext = m.coverage.extrapolated()
    assert set(ext) == {"decode_seqs", "context_tokens"}
    assert ext["decode_seqs"] == (300, 300) and ext["context_tokens"][1] == pytest.approx(30000)


def test_scenario_with_table_jumps_equal_steps_and_flag_extrapolation(table_csv):
    d = base_dict(duration_s=150.0, perf={"step_table": str(table_csv)},
                  workload={"arrivals": {"kind": "gamma", "rate_per_s": 6, "cv": 2},
                            "input_tokens": {"kind": "lognormal", "mean": 1500, "cv": 1.0},
                            "output_tokens": {"kind": "lognormal", "mean": 200, "cv": 1.0}})
    sc = scenario_from_dict(d)
    fast, ref = execute(build(sc, 2)), execute(build(sc, 2, allow_jumps=False))
    for col in ("ttft_s", "e2e_s"):
        np.testing.assert_allclose(fast.requests[col], ref.requests[col], rtol=1e-9, atol=1e-9)
    assert fast.summary["step_table_extrapolated"] is False
    small = dict(d, workload={**d["workload"], "input_tokens": {"kind": "fixed", "value": 30000},
                              "output_tokens": {"kind": "fixed", "value": 20}})
    res = execute(build(scenario_from_dict(small), 2))
    assert res.summary["step_table_extrapolated"] is True
    assert "context_tokens" in res.summary["step_table_extrapolation"]


@pytest.mark.parametrize("body,needle", [
    ("decode_seqs,context_tokens,step_time_s\n1,1,1\n", "lacks column"),
    ("decode_seqs,context_tokens,prefill_tokens,step_time_s\n1,1,0,0.1\n2,1,0,0.1\n1,2,0,0.1\n2,2,0,0.1\n"
     "1,1,5,0.1\n2,1,5,0.1\n1,2,5,0.1\n", "not a full grid"),
    ("decode_seqs,context_tokens,prefill_tokens,step_time_s\n1,1,0,0.1\n1,1,0,0.2\n", "duplicate"),
    ("decode_seqs,context_tokens,prefill_tokens,step_time_s\n1,1,0,fast\n", "'step_time_s' must be a finite number"),
    ("decode_seqs,context_tokens,prefill_tokens,step_time_s\n1,1,0,0.1\n2,1,0,0.1\n", "at least two"),
])
def test_bad_tables(tmp_path, body, needle):
    p = tmp_path / "t.csv"
    p.write_text(body, encoding="utf-8")
    with pytest.raises(InputError, match=needle):
        read_step_table(p)


def test_draft_work_is_a_share_of_a_decode_step(table_csv):
    """The table has no drafter axis: p passes of a share f cost p f one-token decode steps of the
    same batch, in a decode run and in a mixed iteration alike."""
    m = model(table_csv)
    draft = DraftWork(3, 0.25)
    for batch, ctx in ((16, 16 * 1000), (64, 64 * 5000)):
        one_step = m.decode_run(batch).step_s(ctx)
        verify = m.decode_run(batch, 2).step_s(ctx)
        assert m.iteration_s(StepShape(batch, ctx, 2, (), draft)) == pytest.approx(verify + 0.75 * one_step, rel=1e-12)
        chunks = (Chunk(0, 512, True),)
        assert m.iteration_s(StepShape(batch, ctx, 1, chunks, draft)) - m.iteration_s(StepShape(batch, ctx, 1, chunks)) \
            == pytest.approx(0.75 * one_step, rel=1e-12)
        run = m.decode_run(batch, 1, draft)
        path = LinearPath(float(ctx), float(batch))
        assert run.run_s(path, 500) == pytest.approx(sum(run.step_s(path.at(j)) for j in range(500)), rel=1e-10)
