"""Arrival processes, length samplers and trace readers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import base_dict
from hypothesis import given
from hypothesis import strategies as st

from sim.errors import InputError
from sim.scenario import Diurnal, Piecewise, Trace, scenario_from_dict
from sim.workload import (
    LengthSampler,
    diurnal_arrivals,
    gamma_arrivals,
    open_loop_requests,
    piecewise_arrivals,
    poisson_arrivals,
    read_azure_trace,
    read_mooncake_trace,
    rng_streams,
    trace_requests,
)

BUNDLED = "bundled:AzureLLMInferenceTrace_conv.csv"


def rng(seed=0):
    return np.random.default_rng(seed)


def cv(x):
    return x.std() / x.mean()


def test_poisson_rate_and_gaps():
    t = poisson_arrivals(rng(), 50.0, 2000.0)
    assert len(t) / 2000.0 == pytest.approx(50.0, rel=0.02)
    gaps = np.diff(t)
    assert cv(gaps) == pytest.approx(1.0, abs=0.03)
    assert (t >= 0).all() and (t < 2000.0).all() and (np.diff(t) >= 0).all()


@pytest.mark.parametrize("target_cv", [0.5, 2.0, 4.0])
def test_gamma_rate_and_cv(target_cv):
    t = gamma_arrivals(rng(1), 20.0, target_cv, 20000.0)
    assert len(t) / 20000.0 == pytest.approx(20.0, rel=0.05)
    assert cv(np.diff(t)) == pytest.approx(target_cv, rel=0.06)


def test_piecewise_rates_per_segment():
    spec = Piecewise(kind="piecewise", segments=[{"duration_s": 100, "rate_per_s": 5},
                                                 {"duration_s": 50, "rate_per_s": 40}], repeat=True)
    t = piecewise_arrivals(rng(2), spec, 1500.0)  # 10 cycles
    phase = t % 150.0
    low, high = (phase < 100).sum() / 1000.0, (phase >= 100).sum() / 500.0
    assert low == pytest.approx(5, rel=0.08) and high == pytest.approx(40, rel=0.05)
    once = Piecewise(kind="piecewise", segments=[{"duration_s": 10, "rate_per_s": 5}], repeat=False)
    assert piecewise_arrivals(rng(2), once, 100.0).max() < 10


def test_diurnal_follows_sinusoid():
    spec = Diurnal(kind="diurnal", mean_rate_per_s=10, amplitude=0.8, period_s=1000)
    t = diurnal_arrivals(rng(3), spec, 20000.0)
    assert len(t) / 20000.0 == pytest.approx(10, rel=0.03)
    phase = t % 1000
    peak = ((phase > 200) & (phase < 300)).sum()      # sin near +1 around 250
    trough = ((phase > 700) & (phase < 800)).sum()    # sin near -1 around 750
    assert peak / trough == pytest.approx((1 + 0.8 * 0.98) / (1 - 0.8 * 0.98), rel=0.25)


def test_lognormal_mean_and_cv():
    s = scenario_from_dict(base_dict(workload={"input_tokens": {"kind": "lognormal", "mean": 1000, "cv": 1.5}}))
    x = LengthSampler(s.workload.input_tokens, rng(4), "f").draw(400_000)
    assert x.min() >= 1 and x.dtype == np.int64
    assert x.mean() == pytest.approx(1000, rel=0.02)
    assert cv(x.astype(float)) == pytest.approx(1.5, rel=0.05)


def test_uniform_and_fixed_lengths():
    s = scenario_from_dict(base_dict(workload={"input_tokens": {"kind": "uniform", "low": 3, "high": 5}}))
    x = LengthSampler(s.workload.input_tokens, rng(), "f").draw(10_000)
    assert set(np.unique(x)) == {3, 4, 5}
    assert (LengthSampler(s.workload.output_tokens, rng(), "f").draw(5) == 50).all()


def test_empirical_resamples_the_column():
    s = scenario_from_dict(base_dict(workload={"input_tokens": {"kind": "empirical", "path": BUNDLED,
                                                                "column": "ContextTokens"}}))
    x = LengthSampler(s.workload.input_tokens, rng(), "f").draw(200_000)
    assert x.mean() == pytest.approx(1154.7, rel=0.02)   # the trace's mean prompt length


def test_empirical_unknown_column():
    s = scenario_from_dict(base_dict(workload={"input_tokens": {"kind": "empirical", "path": BUNDLED,
                                                                "column": "Nope"}}))
    with pytest.raises(InputError, match="Nope"):
        LengthSampler(s.workload.input_tokens, rng(), "workload.input_tokens")


def test_bundled_azure_trace():
    s = scenario_from_dict(base_dict())
    path = Trace(format="azure", path=BUNDLED).path
    df = read_azure_trace(path)
    assert len(df) == 19366
    assert df["arrival_s"].iloc[0] == 0 and df["arrival_s"].is_monotonic_increasing
    assert df["arrival_s"].iloc[-1] == pytest.approx(3501.72, abs=0.01)
    assert df["input_tokens"].mean() == pytest.approx(1154.697, abs=1e-3)
    del s


def test_trace_rate_scale_and_start():
    spec = Trace(format="azure", path=BUNDLED)
    full = trace_requests(spec, 1e9)
    fast = trace_requests(Trace(format="azure", path=BUNDLED, rate_scale=2.0), 1e9)
    np.testing.assert_allclose(fast.arrival_s, full.arrival_s / 2.0)
    cut = trace_requests(Trace(format="azure", path=BUNDLED, start_s=600), 600)
    assert cut.arrival_s.min() >= 0 and cut.arrival_s.max() < 600
    inside = ((full.arrival_s >= 600) & (full.arrival_s < 1200)).sum()
    assert len(cut) == inside


def test_azure_2024_style_timestamps_and_mooncake(shared_dir, tmp_path):
    code = read_azure_trace(shared_dir / "traces/azure-llm-inference-2023/AzureLLMInferenceTrace_code.csv")
    assert len(code) == 8819
    mc = read_mooncake_trace(shared_dir / "traces/mooncake-fast25/conversation_trace.jsonl")
    assert len(mc) == 12031
    assert mc["arrival_s"].is_monotonic_increasing and mc["input_tokens"].min() >= 1
    assert mc["hash_ids"].iloc[0] == tuple(range(14))


def test_mooncake_timestamps_are_milliseconds(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 1000, "input_length": 10, "output_length": 2, "hash_ids": [1]}\n'
                 '{"timestamp": 3500, "input_length": 20, "output_length": 0}\n', encoding="utf-8")
    df = read_mooncake_trace(p)
    assert df["arrival_s"].tolist() == [0.0, 2.5]
    req = trace_requests(Trace(format="mooncake", path=str(p)), 100)
    assert req.output_tokens.tolist() == [2, 1]  # zero-output rows still produce one token


def test_mooncake_hash_ids_reach_the_requests(tmp_path):
    from sim.runner import build, execute

    p = tmp_path / "m.jsonl"
    # Out of time order on purpose: the hashes must follow their rows through the sort.
    p.write_text('{"timestamp": 2000, "input_length": 30, "output_length": 2, "hash_ids": [7, 8]}\n'
                 '{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": [1]}\n'
                 '{"timestamp": 1000, "input_length": 20, "output_length": 2}\n', encoding="utf-8")
    d = base_dict(duration_s=10.0)
    d["workload"] = {"trace": {"format": "mooncake", "path": str(p)}}
    sim = build(scenario_from_dict(d))
    execute(sim)
    got = {(r.input_tokens, r.hash_ids) for r in sim.requests}
    assert got == {(10, (1,)), (20, None), (30, (7, 8))}
    # Closed-loop clients cycling through the trace carry them too.
    d["workload"]["arrivals"] = {"kind": "closed_loop", "clients": 1}
    sim = build(scenario_from_dict(d))
    execute(sim)
    assert [(r.input_tokens, r.hash_ids) for r in sim.requests[:3]] == [(10, (1,)), (20, None), (30, (7, 8))]


def test_mooncake_bad_hash_ids(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": "abc"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 1: field 'hash_ids' must be a list of integers"):
        read_mooncake_trace(p)


def test_mooncake_rows_outside_the_fast_reading_read_as_before(tmp_path):
    """The file is parsed at once and checked by column; a row the column check does not take
    (integral floats, a hash id beyond 64 bits, blank lines) is read row by row, as before."""
    p = tmp_path / "m.jsonl"
    big = 2 ** 70
    p.write_text('{"timestamp": 1000.0, "input_length": 1030, "output_length": 2, "hash_ids": [1, 2]}\n\n'
                 f'{{"timestamp": 3500, "input_length": 20.0, "output_length": 0, "hash_ids": [{big}]}}\n',
                 encoding="utf-8")
    df = read_mooncake_trace(p)
    assert df["arrival_s"].tolist() == [0.0, 2.5] and df["input_tokens"].tolist() == [1030, 20]
    assert df["hash_ids"].tolist() == [(1, 2), (big,)] and df["line"].tolist() == [1, 3]
    q = tmp_path / "q.jsonl"
    q.write_text('{"timestamp": 1000, "input_length": 1030, "output_length": 2, "hash_ids": [1, 2]}\n\n'
                 '{"timestamp": 3500, "input_length": 20, "output_length": 0, "hash_ids": [3]}\n', encoding="utf-8")
    two = tmp_path / "two.jsonl"     # two objects on one line parse as two array items at once
    two.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}, '
                   '{"timestamp": 1, "input_length": 5, "output_length": 1}\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 1: malformed JSON: Extra data"):
        read_mooncake_trace(two)
    spans = tmp_path / "spans.jsonl"     # one value over two lines, two on the third: still three "rows"
    spans.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1\n"x": 2}\n'
                     '{"timestamp": 1, "input_length": 5, "output_length": 1}, '
                     '{"timestamp": 2, "input_length": 5, "output_length": 1}\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 1: malformed JSON"):
        read_mooncake_trace(spans)
    fast = read_mooncake_trace(q)
    assert fast["input_tokens"].dtype == df["input_tokens"].dtype and fast["line"].tolist() == [1, 3]


@given(st.lists(st.lists(st.integers(0, 6), max_size=5), max_size=8))
def test_hash_chain_check_on_arrays_agrees_with_the_row_by_row_check(chains):
    from sim.workload import _chains_agree, _check_hash_chains_by_row
    rows = [tuple(c) for c in chains]
    try:
        _check_hash_chains_by_row("t", rows, None)
        agree = True
    except InputError:
        agree = False
    assert _chains_agree(rows) == agree


def test_open_loop_requests_are_seeded():
    sc = scenario_from_dict(base_dict())
    a = open_loop_requests(sc, rng_streams(1))
    b = open_loop_requests(sc, rng_streams(1))
    c = open_loop_requests(sc, rng_streams(2))
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    assert not np.array_equal(a.arrival_s[:10], c.arrival_s[:10])


def test_closed_loop_keeps_concurrency():
    from sim.runner import run

    d = base_dict(duration_s=120.0, warmup_s=20.0,
                  workload={"arrivals": {"kind": "closed_loop", "clients": 12, "think_time_s": 0.0}})
    res = run(scenario_from_dict(d))
    req = res.requests
    # With no think time each client always has exactly one request in the system.
    inside = (np.minimum(req["finish_s"], 120.0) - np.maximum(req["arrival_s"], 20.0)).clip(lower=0)
    assert inside.sum() / 100.0 == pytest.approx(12, rel=1e-9)
    assert res.summary["requests_rejected"] == 0
    # With think time, each client's next request starts exactly think_time_s after its previous ends.
    d["workload"]["arrivals"]["think_time_s"] = 0.5
    req = run(scenario_from_dict(d)).requests
    starts = set(np.round(req["arrival_s"], 9))
    ends = np.round(req["finish_s"].dropna(), 9)
    gaps = [round(f + 0.5, 9) in starts for f in ends if f + 0.5 < 120.0]
    assert np.mean(gaps) > 0.99
