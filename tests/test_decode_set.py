"""The decode set's O(block) bookkeeping against brute force over individual sequences."""

from __future__ import annotations

import math

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
    assert [(r.id, kv) for r, kv in done] == [(0, 104)] and done[0][0].generated == 5
    assert ds.size == 1 and ds.kv_tokens(rs[2]) == 104


@settings(max_examples=300, deadline=None)
@given(bt=st.sampled_from([1, 2, 5, 16, 32]), kvs=st.lists(st.integers(1, 300), min_size=1, max_size=20),
       start_g=st.integers(0, 100), n=st.integers(1, 150), used=st.integers(0, 50),
       a=st.floats(1e-4, 1e-2), b=st.floats(0, 1e-7), cut=st.integers(0, 150))
def test_block_seconds_match_the_per_step_sum(bt, kvs, start_g, n, used, a, b, cut):
    """KV block-seconds of a run in closed form = sum over steps of (blocks held) x (step time)."""
    from sim.perf import LinearPath, Segment

    ds = DecodeSet(bt)
    ds.advance(start_g)
    for i, kv in enumerate(kvs):
        r = Request(i, 0.0, kv, 10_000)
        r.generated = 1
        r.seq = i
        ds.add(r, kv)
    path = ds.path()
    assert path == LinearPath(float(sum(kvs) + len(kvs)), float(len(kvs)))
    k = min(cut, n)
    # Two affine pieces with different coefficients, split at step k (as a roofline crossing).
    segments = [s for s in (Segment(0, k, a, b), Segment(k, n, 2 * a, 3 * b)) if s.hi > s.lo]
    dur = [(a + b * path.at(j)) if j < k else (2 * a + 3 * b * path.at(j)) for j in range(n)]
    brute = sum(dur[j] * (used + sum(blocks(kv + j + 1, bt) - blocks(kv, bt) for kv in kvs)) for j in range(n))
    got = ds.block_seconds(segments, path, used, sum(dur))
    assert math.isclose(got, brute, rel_tol=1e-9, abs_tol=1e-12)
