"""The KV allocator and the batch scheduler on their own, without SimPy: admission, chunking,
LIFO preemption and swap transfer times against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from sim.engine.kv_cache import KvCache
from sim.engine.request import Request, Status
from sim.engine.scheduler import BatchLimits, BatchScheduler


def limits(**over) -> BatchLimits:
    d = {"max_num_seqs": 8, "max_num_batched_tokens": 64, "chunked_prefill": True, "max_waiting": 100,
         "preemption": "recompute", "max_context_tokens": 10_000}
    d.update(over)
    return BatchLimits(**d)


def req(i: int, inp: int, out: int) -> Request:
    return Request(i, 0.0, inp, out)


def test_allocator_counts_blocks_and_refuses_overdraft():
    kv = KvCache(10, 16, sliding_blocks=2, watermark_fraction=0.1)
    assert kv.blocks_for(0) == 0 and kv.blocks_for(1) == 3 and kv.blocks_for(16) == 3 and kv.blocks_for(17) == 4
    assert kv.growth_blocks(16, 1) == 1 and kv.growth_blocks(0, 16) == 3
    assert kv.fit_tokens(0, 5) == 48            # 5 blocks - 2 sliding = 3 blocks of 16
    assert kv.fit_tokens(20, 1) == 12 + 16      # fills its partial block, then one more
    assert kv.watermark_blocks == 1
    kv.allocate(10)
    assert kv.free_blocks == 0
    with pytest.raises(RuntimeError, match="1 blocks asked, 0 free"):
        kv.allocate(1)
    kv.release(4)
    with pytest.raises(RuntimeError, match="7 blocks released, 6 in use"):
        kv.release(7)


def test_swap_transfer_time_by_hand():
    # 1,000 tokens x 131,072 B/token (Llama-3.1-8B BF16: 32 layers x 8 KV heads x 128 x 2 x 2 B)
    # over a 64 GB/s host link.
    kv = KvCache(100, 16, swap_bytes_per_token=131072, host_link_bytes_per_s=64e9)
    assert kv.transfer_s(1000) == pytest.approx(1000 * 131072 / 64e9, rel=1e-15)


def test_chunked_prefill_admits_fcfs_within_the_token_budget():
    s = BatchScheduler(KvCache(1000, 16), limits(max_num_batched_tokens=64))
    a, b, c = req(0, 40, 5), req(1, 40, 5), req(2, 10, 5)
    for r in (a, b, c):
        s.enqueue(r, 0.0)
    plan = s.schedule(now=1.0)
    assert [(r.id, n) for r, n in plan.chunks] == [(0, 40), (1, 24)]   # b is cut to fit 64 tokens
    assert plan.admitted == 2 and list(s.waiting) == [c] and a.admit_s == 1.0
    assert s.kv.used_blocks == 3 + 2
    prompt, recompute, sampled, _ = s.finish_iteration(plan, now=2.0)
    assert (prompt, recompute, sampled) == (64, 0, 1) and a.first_token_s == 2.0 and s.finished == []
    plan = s.schedule(now=2.0)                   # a decodes, b continues, c is admitted
    assert plan.decode and [(r.id, n) for r, n in plan.chunks] == [(1, 16), (2, 10)]


def test_preemption_is_lifo_and_recompute_prefills_prompt_plus_generated():
    kv = KvCache(6, 16)
    s = BatchScheduler(kv, limits(max_num_batched_tokens=256))
    a, b = req(0, 48, 100), req(1, 48, 100)
    s.enqueue(a, 0.0)
    s.enqueue(b, 0.0)
    s.finish_iteration(s.schedule(0.0), 0.1)    # both prefilled: 3 blocks each, KV full
    assert kv.free_blocks == 0 and s.decode_set.size == 2
    plan = s.schedule(0.1)                      # the next token needs a 4th block each: b goes
    assert plan.decode and s.decode_set.size == 1 and b.preemptions == 1 and a.preemptions == 0
    assert b.prefill_target == 48 + 1           # recompute: prompt + the token it had sampled
    # vLLM admits no waiting request in an iteration that had to preempt: b waits for the next one
    assert plan.chunks == [] and b.status == Status.WAITING and list(s.waiting) == [b]
    assert plan.swap_s == 0.0 and kv.used_blocks == 4
    s.finish_iteration(plan, 0.2)
    plan = s.schedule(0.2)                      # no preemption now: the two free blocks take b's first 32 tokens
    assert [(r.id, n) for r, n in plan.chunks] == [(1, 32)] and b.status == Status.RUNNING
    assert kv.used_blocks == 6


def test_swap_preemption_charges_the_transfer():
    kv = KvCache(6, 16, swap_bytes_per_token=1000, host_link_bytes_per_s=1e6)
    s = BatchScheduler(kv, limits(max_num_batched_tokens=256, preemption="swap"))
    a, b = req(0, 48, 100), req(1, 48, 100)
    s.enqueue(a, 0.0)
    s.enqueue(b, 0.0)
    s.finish_iteration(s.schedule(0.0), 0.1)
    plan = s.schedule(0.1)
    assert b.swapped_kv == 48 and plan.swap_s == pytest.approx(48 * 1000 / 1e6)


def test_rejection_reasons():
    s = BatchScheduler(KvCache(4, 16), limits(max_waiting=1, max_context_tokens=100))
    assert s.reject_reason(req(0, 90, 20)) == "context_too_long"
    assert s.reject_reason(req(1, 60, 10)) == "exceeds_kv_capacity"   # 69 tokens > 4 blocks of 16
    s.enqueue(req(2, 10, 5), 0.0)
    assert s.reject_reason(req(3, 10, 5)) == "queue_full"
    unbounded = BatchScheduler(KvCache(4, 16), limits(max_waiting=None))
    for i in range(500):
        unbounded.enqueue(req(i, 10, 5), 0.0)
    assert unbounded.reject_reason(req(999, 10, 5)) == ""


def test_a_swap_lengthens_its_iteration_by_the_transfer():
    """Two 48-token prompts fill a 6-block KV cache; at the first decode step the newer one is
    swapped out, and that iteration lasts one decode step of the other plus the transfer."""
    from conftest import step_model, step_s, tiny_kv_gpu
    from test_engine_exact import lone

    from sim.runner import build, execute
    from sim.scenario import scenario_from_dict
    from sim.traffic import open_loop_source
    from sim.workload import OpenLoopRequests

    d = lone(1, 1, duration_s=20.0, hardware={"gpu": tiny_kv_gpu(96)},
                  serving={"batching": {"max_num_seqs": 8, "max_num_batched_tokens": 256, "preemption": "swap"},
                           "kv_cache": {"activation_reserve_gb": 0.0, "gpu_memory_fraction": 1.0,
                                        "block_tokens": 16, "watermark_fraction": 0.0}})
    sc = scenario_from_dict(d)
    sim = build(sc)
    assert sim.memory.kv_blocks == 6
    reqs = OpenLoopRequests(np.array([1.0, 1.0]), np.array([48, 48]), np.array([30, 30]))
    sim.env.process(open_loop_source(sim.env, sim.cluster.submit, reqs, sim.requests))
    res = execute(sim)
    it = res.iterations
    swaps = it[it["swap_s"] > 0]
    transfer = 48 * 32 * 2 * 8 * 128 * 2 / 64e9        # 48 tokens x Llama-3.1-8B BF16 KV / 64 GB/s
    assert swaps["swap_s"].iloc[0] == pytest.approx(transfer, rel=1e-12)
    first = swaps.iloc[0]
    step = step_model(sc)
    assert first["t_end_s"] - first["t_start_s"] == pytest.approx(step_s(step, 1, 49) + transfer, rel=1e-12)
    # Swapped back in later: out and in, two transfers of 48 tokens' KV (it had not decoded yet).
    assert swaps["swap_s"].sum() == pytest.approx(2 * transfer, rel=1e-12)
    assert (res.requests["status"] == "completed").all() and res.requests["preemptions"].sum() == 1
