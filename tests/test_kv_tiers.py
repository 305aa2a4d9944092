"""The KV-cache hierarchy (issue 12): prefix caching in HBM, tiers below it, their links, the
workloads that reuse prefixes, and the metrics and prices they produce."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, base_dict
from hypothesis import given
from hypothesis import strategies as st

from sim.engine import scheduler as sched_mod
from sim.engine.kv_tiers import HbmPrefixCache, Link, OccupancyLog, TierStore
from sim.perf.shape import Chunk, StepShape
from sim.runner import build, execute, run, step_model_for
from sim.scenario import scenario_from_dict
from sim.workload import SHARED, chunk_name

GB = 1e9


def tiered(**over) -> dict:
    """Llama-3.1-8B on one H100 with prefix caching and a host DRAM tier (200 GB)."""
    d = base_dict(serving={"kv_cache": {"prefix_caching": True,
                                        "tiers": [{"kind": "host_dram", "capacity_gb": 200}]}})
    d = {**d, **{k: v for k, v in over.items() if k != "serving"}}
    if "serving" in over:
        d["serving"] = {**d["serving"], **over["serving"]}
    return d


# ---- the pieces ----------------------------------------------------------------------------------

def test_link_is_a_fifo_server_per_direction():
    link = Link("host_dram", read_bytes_per_s=10 * GB, write_bytes_per_s=5 * GB, latency_s=1e-3)
    assert link.read(0.0, 10 * GB) == pytest.approx(1.001)
    assert link.read(0.5, 10 * GB) == pytest.approx(2.002)      # queued behind the first read
    assert link.write(0.5, 5 * GB) == pytest.approx(1.501)      # the other direction is free
    assert link.reading.moved_bytes == 20 * GB and link.writing.moved_bytes == 5 * GB


def test_tier_store_evicts_least_recently_used_first():
    s = TierStore("host_dram", 0, capacity_chunks=3, write_through=True)
    s.insert([1, 2, 3], 0.0)
    s.touch(1)                                   # 2 is now the least recently used
    entered, gone = s.insert([4], 1.0)
    assert entered == [4] and gone == [2]
    entered, gone = s.insert([3, 5], 2.0)        # 3 is refreshed, so 1 goes
    assert entered == [5] and gone == [1]
    assert list(s.lru) == [4, 3, 5]


def test_hbm_cache_evicts_unpinned_chunks_in_lru_order():
    c = HbmPrefixCache(chunk_blocks=4)
    c.add_free([10, 11, 12])
    assert c.pin([11]) == 4                      # leaves the free pool
    assert c.pin([11]) == 0                      # a second user: shared, no more blocks
    assert c.unpin([11]) == 0                    # still used by the other
    assert c.unpin([11]) == 4                    # back, most recently used
    c.add_pinned([13])                           # pinned chunks are never evicted
    assert c.head_hits([10, 11, 12, 99, 13], 5) == 3 and c.head_hits([10, 11], 2, gone={10}) == 0
    assert c.evict(8) == [10, 12]
    assert set(c.refs) == {11, 13} and c.cached_free_blocks == 4


@given(capacity=st.integers(1, 20),
       ops=st.lists(st.tuples(st.sampled_from(["insert", "reserve", "unreserve"]),
                              st.lists(st.integers(0, 40), min_size=1, max_size=8)), max_size=60))
def test_tier_occupancy_never_exceeds_capacity(capacity, ops):
    s = TierStore("nvme", 0, capacity, write_through=False)
    held: list[int] = []
    for t, (op, hashes) in enumerate(ops):
        if op == "insert":
            s.insert(hashes, float(t))
        elif op == "reserve":
            if s.reserve(len(hashes), float(t)) is not None:
                held.append(len(hashes))
        elif held:
            s.unreserve(held.pop(), float(t))
        assert s.used_chunks <= capacity
        assert len(set(s.lru)) == len(s.lru)
    assert max(s.occupancy.values) <= capacity


def test_occupancy_mean_is_time_weighted():
    log = OccupancyLog()
    log.note(1.0, 4)
    log.note(3.0, 2)
    assert log.mean(0.0, 4.0) == pytest.approx((0 * 1 + 4 * 2 + 2 * 1) / 4)


# ---- exact latency of a load ------------------------------------------------------------------------

def one_request_with_its_prefix_in_dram(prefix_load: str = "overlap", tiers: list | None = None):
    """(scenario, built simulation) of one request of 4,608 prompt tokens whose first 4,096 (eight
    shared 512-token chunks) sit in the host DRAM tier before it arrives."""
    d = tiered(workload={"arrivals": {"kind": "offline", "requests": 1},
                         "input_tokens": {"kind": "fixed", "value": 4608},
                         "output_tokens": {"kind": "fixed", "value": 2},
                         "shared_prefix": {"tokens": 4096}})
    d["serving"]["kv_cache"]["prefix_load"] = prefix_load
    if tiers is not None:
        d["serving"]["kv_cache"]["tiers"] = tiers
    sc = scenario_from_dict(d)
    sim = build(sc)
    sim.cluster.replicas[0].kv.tiers.stores[0].insert([chunk_name(SHARED, 0, k) for k in range(8)], 0.0)
    return sc, sim


@pytest.mark.parametrize("load", ["overlap", "stall"])
def test_ttft_of_a_prefix_in_host_memory_is_load_plus_remaining_prefill(load):
    """One request, 4,608 prompt tokens whose first 4,096 (eight 512-token chunks) sit in host
    DRAM: TTFT = latency + bytes / bandwidth + the prefill of the last 512 tokens, exactly."""
    sc, sim = one_request_with_its_prefix_in_dram(prefix_load=load)
    hier = sim.cluster.replicas[0].kv.tiers
    res = execute(sim)
    r = res.requests.iloc[0]
    link = hier.links[0]
    load_s = link.reading.latency_s + 8 * hier.chunk_bytes / link.reading.bytes_per_s
    prefill_s = step_model_for(sc).iteration_s(StepShape(0, 0, 1, (Chunk(4096, 512, True),), None))
    assert r["cached_tokens"] == 4096 and r["loaded_tokens"] == 4096
    assert r["load_s"] == pytest.approx(load_s, rel=1e-12)
    assert r["ttft_s"] == pytest.approx(load_s + prefill_s, rel=1e-12)
    assert res.summary["prefix_hit_rate_host_dram"] == pytest.approx(4096 / 4608)


def test_a_load_slower_than_recomputing_is_recomputed():
    """A tier so slow that loading loses to prefilling: the hit is recomputed instead."""
    _, sim = one_request_with_its_prefix_in_dram(tiers=[{"kind": "host_dram", "capacity_gb": 200, "read_gb_s": 0.01}])
    r = execute(sim).requests.iloc[0]
    assert r["cached_tokens"] == 0 and r["load_s"] == 0.0


# ---- reuse in whole runs -------------------------------------------------------------------------------

def shared_prefix_run(**over):
    d = tiered(workload={"arrivals": {"kind": "poisson", "rate_per_s": 8.0},
                         "input_tokens": {"kind": "uniform", "low": 1500, "high": 3000},
                         "output_tokens": {"kind": "fixed", "value": 40},
                         "shared_prefix": {"tokens": 1024, "prefixes": 3, "fraction": 0.8}}, **over)
    return scenario_from_dict(d)


def test_shared_prefixes_hit_in_hbm_and_save_prefill():
    with_cache = run(shared_prefix_run())
    d = tiered()
    d["serving"]["kv_cache"] = {}
    s = with_cache.summary
    assert s["prefix_hit_rate_hbm"] > 0.2
    assert s["cached_input_tokens"] > 0
    assert s["input_tokens"] == s["computed_input_tokens"] + s["cached_input_tokens"]
    assert s["usd_per_m_cached_input_tokens_priced"] < s["usd_per_m_uncached_input_tokens_priced"]
    # the three classes pay the whole cost, in the price list's ratios (0.27 / 0.07 / 1.10)
    paid = (s["usd_per_m_uncached_input_tokens_priced"] * s["computed_input_tokens"]
            + s["usd_per_m_cached_input_tokens_priced"] * s["cached_input_tokens"]
            + s["usd_per_m_output_tokens_priced"] * s["output_tokens"]) / 1e6
    assert paid == pytest.approx(s["cost_usd"], rel=1e-12)
    assert s["usd_per_m_cached_input_tokens_priced"] / s["usd_per_m_uncached_input_tokens_priced"] == \
        pytest.approx(0.07 / 0.27)
    assert s["usd_per_m_output_tokens_priced"] / s["usd_per_m_uncached_input_tokens_priced"] == pytest.approx(1.10 / 0.27)


def _blocks_check(monkeypatch):
    """After every iteration, the KV blocks in use are exactly the running requests' own blocks
    plus the pinned prefix chunks' (blocks are conserved), and cached chunks fit in the free ones."""
    seen = []

    def check(self):
        p = self.prefix
        cb = p.hbm.chunk_blocks
        own = sum((self.decode_set.held_blocks(r) - len(r.pinned) * cb) if r.in_decode else r.blocks
                  for r in self.running.values())
        pinned = sum(1 for v in p.hbm.refs.values() if v > 0)
        assert own + pinned * cb == self.kv.used_blocks
        assert p.hbm.cached_free_blocks <= self.kv.free_blocks
        seen.append(1)

    for name in ("finish_iteration", "finish_decode_run"):
        orig = getattr(sched_mod.BatchScheduler, name)

        def wrapped(self, *a, _orig=orig, **k):
            out = _orig(self, *a, **k)
            check(self)
            return out
        monkeypatch.setattr(sched_mod.BatchScheduler, name, wrapped)
    return seen


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_blocks_are_conserved_under_pressure(monkeypatch, preemption):
    """A small KV cache (many evictions and preemptions), a tiny host tier (swaps that do not fit
    fall back to recompute): blocks add up after every iteration, and all are free at the end."""
    d = tiered(serving={"batching": {"max_num_seqs": 64, "max_num_batched_tokens": 4096,
                                     "preemption": preemption},
                        "kv_cache": {"prefix_caching": True, "gpu_memory_fraction": 0.25,
                                     "tiers": [{"kind": "host_dram", "capacity_gb": 2}, {"kind": "nvme"}]}},
               workload={"arrivals": {"kind": "poisson", "rate_per_s": 12.0},
                         "input_tokens": {"kind": "uniform", "low": 1000, "high": 6000},
                         "output_tokens": {"kind": "uniform", "low": 50, "high": 400},
                         "shared_prefix": {"tokens": 2048, "prefixes": 4, "fraction": 0.7}})
    seen = _blocks_check(monkeypatch)
    sim = build(scenario_from_dict(d))
    res = execute(sim)
    assert seen and res.summary["requests_completed"] == res.summary["requests_arrived"]
    kv = sim.cluster.replicas[0].kv
    assert kv.used_blocks == 0 and not any(kv.tiers.hbm.refs.values())
    for store in kv.tiers.stores:
        assert max(store.occupancy.values) <= store.capacity_chunks and store.reserved_chunks == 0


JUMP_CASES = {
    "chunked, overlapped loads": {},
    "stalled loads": {"kv_cache": {"prefix_load": "stall"}},
    "whole prompts, separate": {"batching": {"chunked_prefill": False}},
    "whole prompts, mixed": {"batching": {"chunked_prefill": False, "whole_prompts": "mixed"}},
    "KV pressure, recompute": {"kv_cache": {"gpu_memory_fraction": 0.3},
                               "batching": {"max_num_seqs": 64, "max_num_batched_tokens": 4096}},
    "KV pressure, swap into a small DRAM": {"kv_cache": {"gpu_memory_fraction": 0.3, "tiers": [
        {"kind": "host_dram", "capacity_gb": 3}, {"kind": "nvme"}]},
        "batching": {"max_num_seqs": 64, "max_num_batched_tokens": 4096, "preemption": "swap"}},
}


@pytest.mark.parametrize("case", list(JUMP_CASES))
def test_jump_mode_equals_step_mode(case):
    d = tiered(workload={"arrivals": {"kind": "poisson", "rate_per_s": 12.0},
                         "input_tokens": {"kind": "uniform", "low": 1500, "high": 3000},
                         "output_tokens": {"kind": "uniform", "low": 50, "high": 600},
                         "shared_prefix": {"tokens": 1024, "prefixes": 3, "fraction": 0.8}})
    for key, val in JUMP_CASES[case].items():
        d["serving"][key] = {**d["serving"].get(key, {}), **val}
    sc = scenario_from_dict(d)
    cols = ["arrival_s", "ttft_s", "e2e_s", "cached_tokens", "loaded_tokens", "load_s", "preemptions"]
    jumped = execute(build(sc))
    stepped = execute(build(sc, allow_jumps=False))
    pd.testing.assert_frame_equal(jumped.requests[cols], stepped.requests[cols], check_exact=False, rtol=1e-9,
                                  atol=1e-12)
    assert jumped.summary["prefix_hit_rate"] == stepped.summary["prefix_hit_rate"] > 0


MOONCAKE_JUMP_CASES = {
    # four replicas share the node's DRAM and NVMe: another replica's writes evict a waiting
    # head's hits from under it, so decode runs must not assume those hits stay
    "write-through DRAM on a per-node link, NVMe": [{"kind": "host_dram", "capacity_gb": 150, "link": "per_node"},
                                                     {"kind": "nvme", "capacity_gb": 400}],
    # HBM's evictions are written into DRAM as they happen, so no decode run evicts
    "write-on-evict DRAM": [{"kind": "host_dram", "write": "on_evict", "capacity_gb": 200}, {"kind": "nvme"}],
}


@pytest.mark.parametrize("case", list(MOONCAKE_JUMP_CASES))
def test_jump_mode_equals_step_mode_on_the_mooncake_replay(case):
    """Real chains, a saturated node and a small HBM cache: waiting heads blocked on their hits,
    decode runs while overlapped loads are in flight, evictions on every few steps."""
    import yaml
    d = yaml.safe_load((ROOT / "scenarios/mooncake_prefix_tiers_h200.yaml").read_text())
    d.update(duration_s=600, warmup_s=0)
    d["serving"]["kv_cache"].update(tiers=MOONCAKE_JUMP_CASES[case], gpu_memory_fraction=0.6)
    sc = scenario_from_dict(d)
    cols = ["arrival_s", "ttft_s", "e2e_s", "cached_tokens", "loaded_tokens", "load_s", "preemptions"]
    jumped, stepped = execute(build(sc)), execute(build(sc, allow_jumps=False))
    pd.testing.assert_frame_equal(jumped.requests[cols], stepped.requests[cols], check_exact=False, rtol=1e-9,
                                  atol=1e-12)
    assert jumped.summary["prefix_hit_rate"] == stepped.summary["prefix_hit_rate"] > 0.1
    assert len(jumped.iterations) < 0.7 * len(stepped.iterations)     # decode runs did happen


def test_same_seed_same_results():
    sc = shared_prefix_run()
    a, b = run(sc), run(sc)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    assert {k: v for k, v in a.summary.items() if k not in ("wall_s", "sim_requests_per_wall_s")} == \
        {k: v for k, v in b.summary.items() if k not in ("wall_s", "sim_requests_per_wall_s")}


# ---- sessions ---------------------------------------------------------------------------------------------

def test_sessions_grow_their_context_and_reuse_it():
    d = tiered(workload={"sessions": {"rate_per_s": 0.5, "turns": {"kind": "fixed", "value": 4},
                                      "think_time_s": 5.0, "system_prompt_tokens": 1024,
                                      "user_tokens": {"kind": "fixed", "value": 300},
                                      "output_tokens": {"kind": "fixed", "value": 200}}})
    res = run(scenario_from_dict(d))
    req = res.requests
    assert set(req["input_tokens"]) <= {1024 + 300 + 500 * t for t in range(4)}
    later = req[req["input_tokens"] > 1324]
    assert len(later) and (later["cached_tokens"] >= 1024).all()
    assert res.summary["prefix_hit_rate"] > 0.4


# ---- input checks ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kv, needle", [
    ({"prefix_caching": True, "tiers": [{"kind": "host_dram", "capacity_gb": 0}]}, "capacity_gb"),
    ({"prefix_caching": True, "tiers": [{"kind": "nvme", "read_gb_s": -1}]}, "read_gb_s"),
    ({"tiers": [{"kind": "nvme"}, {"kind": "host_dram", "capacity_gb": 10}]}, "out of order"),
    ({"prefix_caching": True, "tiers": [{"kind": "remote"}]}, "capacity_gb"),
    ({"prefix_caching": True, "prefix_chunk_tokens": 100}, "multiple of block_tokens"),
    ({"prefix_caching": True, "tiers": [{"kind": "host_dram", "capacity_gb": 0.01}]}, "less than one"),
])
def test_bad_tiers_are_refused(kv, needle):
    d = base_dict(serving={"kv_cache": kv})
    with pytest.raises(Exception, match=needle):
        scenario_from_dict(d)


def test_shared_prefix_shorter_than_a_chunk_is_refused():
    d = base_dict(serving={"kv_cache": {"prefix_caching": True}})
    d["workload"]["shared_prefix"] = {"tokens": 300}
    with pytest.raises(Exception, match="shorter than one prefix chunk"):
        scenario_from_dict(d)


@pytest.mark.parametrize("path", ["scenarios/mooncake_prefix_tiers_h200.yaml", "scenarios/multiturn_offload_h100.yaml"])
def test_prefix_caching_switches_off_from_the_command_line(tmp_path, capsys, path):
    from simcli.main import main
    out = tmp_path / "out"
    assert main(["run", str(ROOT / path), "--quiet", "--out", str(out), "--set", "serving.kv_cache.prefix_caching=false",
                 "--set", "serving.router=least_outstanding", "--set", "duration_s=30", "--set", "warmup_s=0"]) == 0
    assert (out / "summary.json").exists()


def test_mooncake_spread_stays_within_ticks(tmp_path):
    from sim.scenario import Trace
    from sim.workload import rng_streams, trace_requests
    p = tmp_path / "t.jsonl"
    rows = [f'{{"timestamp": {t}, "input_length": 600, "output_length": 5, "hash_ids": [{i}, {i + 100}]}}'
            for i, t in enumerate([0, 0, 0, 3000, 3000, 6000])]
    p.write_text("\n".join(rows), encoding="utf-8")
    reqs = trace_requests(Trace(format="mooncake", path=str(p)), 100.0, 512, rng_streams(1)["trace_spread"])
    t = np.sort(reqs.arrival_s)
    assert (t[:3] < 3.0).all() and ((t[3:5] >= 3.0) & (t[3:5] < 6.0)).all() and t[5] >= 6.0
    assert len(set(t[:3])) == 3
    assert all(len(c) == 1 for c in reqs.hash_ids)     # 600 tokens: one full 512-token block


# ---- the CLI on bad input: exit 2, one line naming the field, nothing written ---------------------------------

def _refused(tmp_path, capsys, data: dict, needle: str) -> None:
    import yaml

    from simcli.main import main
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    before = sorted(tmp_path.rglob("*"))
    assert main(["run", str(p), "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("tiers, needle", [
    ([{"kind": "host_dram", "capacity_gb": 0}], "capacity_gb"),
    ([{"kind": "host_dram", "capacity_gb": 100, "write_gb_s": 0}], "write_gb_s"),
    ([{"kind": "remote", "capacity_gb": 100}, {"kind": "nvme"}], "out of order"),
    ([{"kind": "nvme"}, {"kind": "nvme"}], "out of order"),
])
def test_cli_refuses_bad_tiers(tmp_path, capsys, tiers, needle):
    _refused(tmp_path, capsys, base_dict(serving={"kv_cache": {"prefix_caching": True, "tiers": tiers}}), needle)


def _mooncake(tmp_path, rows: list[str]) -> dict:
    p = tmp_path / "trace.jsonl"
    p.write_text("\n".join(rows), encoding="utf-8")
    d = base_dict(serving={"kv_cache": {"prefix_caching": True}})
    d["workload"] = {"trace": {"format": "mooncake", "path": str(p)}}
    return d


def test_cli_refuses_a_mooncake_trace_without_hashes(tmp_path, capsys):
    d = _mooncake(tmp_path, ['{"timestamp": 0, "input_length": 900, "output_length": 5, "hash_ids": [1, 2]}',
                             '{"timestamp": 10, "input_length": 900, "output_length": 5}'])
    _refused(tmp_path, capsys, d, "has no 'hash_ids'")


def test_cli_refuses_contradicting_hash_chains(tmp_path, capsys):
    d = _mooncake(tmp_path, ['{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2, 3]}',
                             '{"timestamp": 10, "input_length": 1100, "output_length": 5, "hash_ids": [2, 1, 4]}'])
    _refused(tmp_path, capsys, d, "line 2: hash id 2 at position 0 after None was at position 1 after 1 on line 1")


def test_cli_refuses_a_hash_named_after_two_different_prefixes(tmp_path, capsys):
    d = _mooncake(tmp_path, ['{"timestamp": 0, "input_length": 1600, "output_length": 5, "hash_ids": [1, 2, 3, 4]}',
                             '{"timestamp": 10, "input_length": 1600, "output_length": 5, "hash_ids": [9, 2, 3, 4]}'])
    _refused(tmp_path, capsys, d, "hash id 2 at position 1 after 9 was at position 1 after 1")


def test_cli_refuses_a_mooncake_chunk_other_than_512(tmp_path, capsys):
    d = _mooncake(tmp_path, ['{"timestamp": 0, "input_length": 900, "output_length": 5, "hash_ids": [1, 2]}'])
    d["serving"]["kv_cache"]["prefix_chunk_tokens"] = 256
    _refused(tmp_path, capsys, d, "prefix_chunk_tokens=256")


def test_cli_refuses_prefix_caching_in_a_decode_pool(tmp_path, capsys):
    d = base_dict(serving={"role": "decode", "kv_cache": {"prefix_caching": True}})
    _refused(tmp_path, capsys, d, "decode pool")


def test_cli_prints_the_hierarchy_rows(tmp_path, capsys):
    import yaml

    from simcli.main import main
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(tiered(workload={"arrivals": {"kind": "poisson", "rate_per_s": 4.0},
                                                 "input_tokens": {"kind": "fixed", "value": 2000},
                                                 "output_tokens": {"kind": "fixed", "value": 20},
                                                 "shared_prefix": {"tokens": 1024}})), encoding="utf-8")
    assert main(["run", str(p), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "prefix hits: all / HBM / host DRAM" in out and "TTFT p50: queueing / prefix load / prefill" in out
    assert "price per million tokens: uncached input / cached input / output" in out


def test_cache_aware_routing_keeps_a_conversation_where_its_kv_is():
    d = tiered(workload={"sessions": {"rate_per_s": 1.0, "turns": {"kind": "fixed", "value": 5},
                                      "think_time_s": 3.0, "system_prompt_tokens": 512, "system_prompts": 8,
                                      "user_tokens": {"kind": "fixed", "value": 400},
                                      "output_tokens": {"kind": "fixed", "value": 100}}})
    d["serving"]["replicas"] = 4
    spread = run(scenario_from_dict(d)).summary
    d["serving"]["router"] = "cache_aware"
    aware = run(scenario_from_dict(d)).summary
    assert aware["prefix_hit_rate_hbm"] > spread["prefix_hit_rate_hbm"] + 0.2
    assert aware["requests_completed"] == spread["requests_completed"]


def test_cache_aware_routing_needs_prefix_caching():
    d = base_dict(serving={"router": "cache_aware"})
    with pytest.raises(Exception, match="prefix_caching"):
        scenario_from_dict(d)


@pytest.mark.parametrize("capacity_gb", [0.1, 500.0])
def test_swap_uses_the_host_tier_and_its_capacity(capacity_gb):
    """Swapped-out KV goes over the host tier's link into its room; when the tier cannot hold a
    request's KV at all, the request is recomputed instead."""
    d = base_dict(serving={"kv_cache": {"gpu_memory_fraction": 0.3, "tiers": [{"kind": "host_dram",
                                                                                  "capacity_gb": capacity_gb}]},
                           "batching": {"max_num_seqs": 64, "max_num_batched_tokens": 4096, "preemption": "swap"}},
                  workload={"arrivals": {"kind": "poisson", "rate_per_s": 20.0},
                            "input_tokens": {"kind": "uniform", "low": 1500, "high": 3000},
                            "output_tokens": {"kind": "uniform", "low": 100, "high": 800}})
    s = run(scenario_from_dict(d)).summary
    assert s["preemptions"] > 0
    if capacity_gb < 1:         # one 512-token chunk's room: only partial prefills fit, the rest is recomputed
        assert s["recompute_tokens"] > 0 and s["link_host_dram_write_gb"] < 1
    else:
        assert s["recompute_tokens"] == 0 and s["link_host_dram_write_gb"] > 0
        assert s["link_host_dram_read_gb"] == pytest.approx(s["link_host_dram_write_gb"], rel=0.2)


def test_a_chunk_still_being_loaded_is_waited_for():
    """Request B hits the chunks request A is still loading: B's first token comes after they
    arrive, not before."""
    from sim.engine.request import Request
    _, sim = one_request_with_its_prefix_in_dram(tiers=[{"kind": "host_dram", "capacity_gb": 200, "read_gb_s": 4}])
    chain = tuple(chunk_name(SHARED, 0, k) for k in range(8))

    def late():
        yield sim.env.timeout(0.01)
        r = Request(999, sim.env.now, 4608, 2, hash_ids=(*chain, 12345))
        sim.requests.append(r)
        sim.cluster.submit(r)
    sim.env.process(late())
    req = execute(sim).requests
    a, b = req.iloc[0], req.iloc[1]
    assert a["loaded_tokens"] == 4096 and b["cached_tokens"] == 4096 and b["loaded_tokens"] == 0
    assert b["arrival_s"] + b["ttft_s"] > a["load_s"]          # after A's load arrived
    assert b["load_s"] == pytest.approx(a["load_s"] - 0.01)     # B waited for the rest of it


@pytest.mark.parametrize("whole_prompts", ["separate", "mixed"])
def test_whole_prompts_stall_for_their_loads(whole_prompts):
    """Without chunked prefill a prompt runs whole in the iteration that admits it: a load stalls
    that iteration (never a request left loading and then preempted)."""
    d = tiered(workload={"arrivals": {"kind": "offline", "requests": 4},
                         "input_tokens": {"kind": "fixed", "value": 4608},
                         "output_tokens": {"kind": "fixed", "value": 200},
                         "shared_prefix": {"tokens": 4096, "fraction": 0.5}})
    d["serving"]["batching"].update({"chunked_prefill": False, "whole_prompts": whole_prompts,
                                     "max_num_batched_tokens": 8192})
    sim = build(scenario_from_dict(d))
    sim.cluster.replicas[0].kv.tiers.stores[0].insert([chunk_name(SHARED, 0, k) for k in range(8)], 0.0)
    req = execute(sim).requests
    assert (req["preemptions"] == 0).all()
    loaded = req[req["loaded_tokens"] > 0]
    assert len(loaded) and (loaded["load_s"] > 0).all()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_write_on_evict_host_tier_takes_what_hbm_evicts(seed):
    d = tiered(seed=seed, serving={"kv_cache": {"prefix_caching": True, "gpu_memory_fraction": 0.3,
                                                 "tiers": [{"kind": "host_dram", "capacity_gb": 1, "write": "on_evict"}]},
                                   "batching": {"max_num_seqs": 64, "max_num_batched_tokens": 4096}},
               workload={"arrivals": {"kind": "poisson", "rate_per_s": 12.0},
                         "input_tokens": {"kind": "uniform", "low": 1500, "high": 3000},
                         "output_tokens": {"kind": "uniform", "low": 50, "high": 400},
                         "shared_prefix": {"tokens": 1024, "prefixes": 20, "fraction": 0.9}})
    s = run(scenario_from_dict(d)).summary
    assert s["requests_completed"] == s["requests_arrived"]
    assert s["link_host_dram_write_gb"] > 0 and s["prefix_hit_rate_host_dram"] > 0


def test_a_chunk_is_read_from_a_tier_only_after_its_write_ends():
    """With a write link of 1 MB/s, chunks written through to DRAM are not there to be read for a
    long time: their hits are recomputed instead (loading would wait for the write)."""
    def summary(write_gb_s):
        d = tiered(serving={"kv_cache": {"prefix_caching": True, "gpu_memory_fraction": 0.3, "tiers": [
                       {"kind": "host_dram", "capacity_gb": 100, "write_gb_s": write_gb_s}]},
                            "batching": {"max_num_seqs": 64, "max_num_batched_tokens": 4096}},
                   workload={"arrivals": {"kind": "poisson", "rate_per_s": 12.0},
                             "input_tokens": {"kind": "uniform", "low": 1500, "high": 3000},
                             "output_tokens": {"kind": "uniform", "low": 50, "high": 400},
                             "shared_prefix": {"tokens": 1024, "prefixes": 40, "fraction": 0.9}})
        return run(scenario_from_dict(d)).summary
    fast, slow = summary(64.0), summary(0.001)
    assert fast["prefix_hit_rate_host_dram"] > 0.05
    assert slow["prefix_hit_rate_host_dram"] < fast["prefix_hit_rate_host_dram"] / 5


def test_sessions_plan_by_their_rate():
    from sim.plan import load_knob
    d = tiered(workload={"sessions": {"rate_per_s": 0.5, "turns": {"kind": "fixed", "value": 3},
                                      "user_tokens": {"kind": "fixed", "value": 300},
                                      "output_tokens": {"kind": "fixed", "value": 100}}})
    knob = load_knob(scenario_from_dict(d))
    assert knob.path == "workload.sessions.rate_per_s" and knob.value == 0.5


def test_a_run_writes_its_tiers_as_run_and_their_sources(tmp_path):
    import json

    import yaml

    from simcli.main import main
    out = tmp_path / "out"
    assert main(["run", str(ROOT / "scenarios/multiturn_offload_h100.yaml"), "--quiet", "--out", str(out),
                 "--set", "duration_s=30", "--set", "warmup_s=0"]) == 0
    tier = yaml.safe_load((out / "scenario.resolved.yaml").read_text())["serving"]["kv_cache"]["tiers"][0]
    assert tier == {"kind": "host_dram", "capacity_gb": 512.0, "read_gb_s": 64.0, "write_gb_s": 64.0,
                    "latency_s": 5e-06, "link": "per_gpu", "write": "through", "capex_usd_per_gb": 10.0}
    sources = json.loads((out / "run.json").read_text())["kv_tier_sources"]["host_dram"]
    assert sources["capacity_gb"] == "scenario" and "PCIe Gen5" in sources["read_gb_s"]
    assert set(sources) == set(tier) - {"kind"}


def test_tco_buys_the_tiers_by_hand():
    """Two one-GPU replicas on one 8-GPU node: the node's 512 GB of DRAM ($10/GB) and 30,720 GB of
    NVMe ($0.15/GB) are bought whole and shared by the two GPUs, over 5 years."""
    from sim.cost import kv_tiers_usd_per_gpu_h
    d = tiered(cost={"mode": "tco", "tco": {"capex_usd_per_gpu": 25000, "amortization_years": 5}})
    d["serving"]["replicas"] = 2
    d["serving"]["kv_cache"]["tiers"] = [{"kind": "host_dram", "capacity_gb": 512}, {"kind": "nvme"}]
    sc = scenario_from_dict(d)
    want = (512 * 10.0 + 30720 * 0.15) / 2 / (5 * 8760)
    assert kv_tiers_usd_per_gpu_h(sc) == pytest.approx(want)
    s = run(sc).summary
    assert s["kv_tiers_usd_per_gpu_h"] == pytest.approx(want)
    d["serving"]["kv_cache"]["tiers"] = []
    assert s["price_usd_per_gpu_h"] - run(scenario_from_dict(d)).summary["price_usd_per_gpu_h"] == \
        pytest.approx(want, rel=1e-3)      # the rest of the price moves only with the power drawn


def test_cache_aware_routing_is_the_same_in_jump_and_step_mode():
    """Three replicas short of KV (cached chunks evicted inside decode runs), sessions with thirty
    system prompts: every request goes to the same replica and gets the same latency."""
    d = base_dict(seed=2, serving={"kv_cache": {"prefix_caching": True, "gpu_memory_fraction": 0.25},
                                   "batching": {"max_num_seqs": 64, "max_num_batched_tokens": 4096}, "replicas": 3,
                                   "router": "cache_aware"})
    d["workload"] = {"sessions": {"rate_per_s": 4.0, "turns": {"kind": "uniform", "low": 2, "high": 8},
                                  "think_time_s": 1.0, "system_prompt_tokens": 2048, "system_prompts": 30,
                                  "user_tokens": {"kind": "uniform", "low": 100, "high": 800},
                                  "output_tokens": {"kind": "uniform", "low": 50, "high": 500}}}
    sc = scenario_from_dict(d)
    cols = ["replica", "arrival_s", "ttft_s", "e2e_s", "cached_tokens"]
    jumped, stepped = execute(build(sc)).requests[cols], execute(build(sc, allow_jumps=False)).requests[cols]
    pd.testing.assert_frame_equal(jumped, stepped, check_exact=False, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("source", ["synthetic", "azure"])
def test_closed_loop_prompts_have_chunks_of_their_own(source):
    """Closed-loop clients draw prompts in batches (synthetic) or in laps of a trace (Azure):
    without a shared prefix, no two requests share a chunk."""
    from sim.workload import ClosedLoopLengths, rng_streams
    d = tiered()
    d["workload"] = {"arrivals": {"kind": "closed_loop", "clients": 4}}
    if source == "azure":
        d["workload"]["trace"] = {"format": "azure", "path": "bundled:AzureLLMInferenceTrace_conv.csv"}
    else:
        d["workload"].update({"input_tokens": {"kind": "uniform", "low": 600, "high": 3000},
                              "output_tokens": {"kind": "fixed", "value": 10}})
    lengths = ClosedLoopLengths(scenario_from_dict(d), rng_streams(1))
    seen: set[int] = set()
    total = 0
    for _ in range(5000 if source == "synthetic" else 20_000):     # beyond a batch of 4,096; a lap of the trace
        inp, _, chain = lengths.next()
        assert chain is not None and len(chain) == inp // 512
        seen.update(chain)
        total += len(chain)
    assert len(seen) == total
