"""The decode set's O(block) bookkeeping against brute force over individual sequences."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine.decode_set import DecodeSet
from sim.engine.request import Request


def blocks(kv: int, bt: int) -> int:
    return math.ceil(kv / bt)


@settings(max_examples=200, deadline=None)
@given(bt=st.sampled_from([1, 4, 16, 32]), kvs=st.lists(st.integers(1, 500), min_size=1, max_size=30),
       start_g=st.integers(0, 1000), n=st.integers(0, 200), free=st.integers(0, 400))
def test_blocks_needed_and_safe_steps_match_brute_force(bt, kvs, start_g, n, free):
    ds = DecodeSet(bt)
    ds.advance(start_g)
    reqs = []
    for i, kv in enumerate(kvs):
        r = Request(i, 0.0, kv, 10_000)
        r.generated = 1
        r.seq = i
        ds.add(r, kv)
        reqs.append(r)
    brute = sum(blocks(kv + n, bt) - blocks(kv, bt) for kv in kvs)
    assert ds.blocks_needed(n) == brute
    hist, s0 = ds.allocation_pattern()
    per_step = [blocks(kv + s, bt) - blocks(kv + s - 1, bt) for s in range(1, bt + 1) for kv in kvs]
    ahead = [sum(per_step[(s - 1) * len(kvs):s * len(kvs)]) for s in range(1, bt + 1)]
    assert list(ds.allocations_ahead()) == ahead
    assert [hist[(s0 - r) % bt] for r in range(bt)] == ahead
    assert ds.allocation_pattern()[0] is hist, "same object while the membership is unchanged"
    assert ds.ctx_sum_at(start_g + 1) == sum(kvs) + len(kvs)
    safe = ds.safe_steps(free, 300)
    need = lambda k: sum(blocks(kv + k, bt) - blocks(kv, bt) for kv in kvs)  # noqa: E731
    assert need(safe) <= free
    assert safe == 300 or need(safe + 1) > free


def test_finish_order_and_removal():
    ds = DecodeSet(16)
    rs = []
    for i, out in enumerate([5, 3, 8]):
        r = Request(i, 0.0, 100, out)
        r.generated = 1
        r.seq = i
        ds.add(r, 100)
        rs.append(r)
    assert ds.steps_to_next_finish() == 2      # output 3: two decode steps after the first token
    ds.remove(rs[1])                           # preempted
    assert rs[1].generated == 1
    assert ds.steps_to_next_finish() == 4
    assert ds.tokens_sampled(4) == 8 and ds.path() == (2 * 101, 2)
    ds.advance(4)
    assert ds.generated(rs[2]) == 5
    done = ds.pop_finished()
    assert [(r.id, blocks) for r, blocks in done] == [(0, 7)] and done[0][0].generated == 5   # 104 tokens: 7 blocks
    assert ds.size == 1 and ds.kv_tokens(rs[2]) == 104


class OneRun:
    """A step model whose every decode run is `run`."""

    def __init__(self, run) -> None:
        self.run = run

    def decode_run(self, batch, query_tokens_per_seq=1):
        return self.run


class TwoPieces:
    """A decode run whose step j lasts a + b S_j before step k and 2a + 3b S_j from k on."""

    def __init__(self, a: float, b: float, k: int) -> None:
        self.a, self.b, self.k = a, b, k

    def segments(self, path, n):
        k = min(self.k, n)
        return [s for s in ((0, k, self.a, self.b), (k, n, 2 * self.a, 3 * self.b)) if s[1] > s[0]]

    def step(self, path, j):
        return self.a + self.b * path.at(j) if j < self.k else 2 * self.a + 3 * self.b * path.at(j)


@settings(max_examples=300, deadline=None)
@given(bt=st.sampled_from([1, 2, 5, 16, 32]), kvs=st.lists(st.integers(1, 300), min_size=1, max_size=20),
       start_g=st.integers(0, 100), n=st.integers(1, 150), used=st.integers(0, 50),
       a=st.floats(1e-4, 1e-2), b=st.floats(0, 1e-7), cut=st.integers(0, 150))
def test_block_seconds_match_the_per_step_sum(bt, kvs, start_g, n, used, a, b, cut):
    """KV block-seconds of a run in closed form = sum over steps of (blocks held) x (step time)."""
    from sim.engine.kv_integral import DecodeRunLog, block_seconds
    from sim.perf import LinearPath

    ds = DecodeSet(bt)
    ds.advance(start_g)
    for i, kv in enumerate(kvs):
        r = Request(i, 0.0, kv, 10_000)
        r.generated = 1
        r.seq = i
        ds.add(r, kv)
    path = ds.path()
    assert path == LinearPath(float(sum(kvs) + len(kvs)), float(len(kvs)))
    run = TwoPieces(a, b, cut)
    dur = [run.step(path, j) for j in range(n)]
    brute = sum(dur[j] * (used + sum(blocks(kv + j + 1, bt) - blocks(kv, bt) for kv in kvs)) for j in range(n))
    log = DecodeRunLog(bt)
    log.add(0, used, n, sum(dur), len(kvs), path.first, path.slope, ds.allocation_pattern())
    got = block_seconds(log, OneRun(run))[1][0]
    assert math.isclose(got, brute, rel_tol=1e-9, abs_tol=1e-12)


def test_block_seconds_of_roofline_runs_vectorized():
    """Many roofline decode runs at once (memory-bound, compute-bound and crossing ones) against
    the per-step sum."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import base_dict, step_model, step_s

    from sim.engine.kv_integral import DecodeRunLog, block_seconds
    from sim.scenario import scenario_from_dict

    # At 0.5% of peak FLOPS attention outgrows KV reads near 49k tokens of context: runs there cross.
    step = step_model(scenario_from_dict(base_dict(perf={"compute_efficiency": 0.005, "attention_efficiency": 0.005,
                                                         "hbm_bw_efficiency": 0.776,
                                                         "gemm_half_tokens": 0.0})))
    log, brute, pieces = DecodeRunLog(16), [], set()
    for k, (batch, ctx, n) in enumerate([(1, 100, 40), (8, 900, 70), (64, 20, 300), (200, 3000, 33), (3, 5, 1),
                                         (1, 49_000, 700), (1, 48_500, 1200)]):
        ds = DecodeSet(16)
        ds.advance(k)
        kvs = [ctx + 7 * i for i in range(batch)]
        for i, kv in enumerate(kvs):
            r = Request(i, 0.0, kv, 10_000)
            r.generated = 1
            r.seq = i
            ds.add(r, kv)
        run, path = step.decode_run(batch), ds.path()
        dur = [step_s(step, batch, path.at(j)) for j in range(n)]
        held = [17 + sum(blocks(kv + j + 1, 16) - blocks(kv, 16) for kv in kvs) for j in range(n)]
        brute.append(sum(d * h for d, h in zip(dur, held, strict=True)))
        log.add(k, 17, n, run.run_s(path, n), batch, path.first, path.slope, ds.allocation_pattern())
        pieces.add(len(run.segments(path, n)))
    assert pieces == {1, 2}, "both one- and two-piece runs"
    records, got = block_seconds(log, step)
    assert list(records) == list(range(len(brute)))
    whole, = log.tables()
    parts = list(log.tables(max_cells=2 * len(whole[0])))    # two runs per part: memory stays bounded
    assert len(parts) == 4 and (np.vstack(parts) == whole).all()
    for g, want in zip(got, brute, strict=True):
        assert math.isclose(g, want, rel_tol=1e-9)
