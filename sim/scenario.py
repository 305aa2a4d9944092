"""Scenario schema: what a user writes in a scenario YAML file, validated and frozen.

Pydantic v2 models with ``extra="forbid"`` (unknown keys are errors) and ``frozen=True``.
Catalog names (``model: llama-3.1-70b``, ``hardware.gpu: h200``) are resolved to full specs at
load time, so a loaded Scenario is self-contained and can be dumped as the "resolved scenario".
Cross-field checks (tensor parallelism vs heads, precision support, memory fit, batching
limits) run here so that a bad file fails before any simulation starts. Every key is documented
in docs/scenario-reference.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sim.catalog import (
    AttentionPrecision,
    GpuSpec,
    ModelSpec,
    Precision,
    default_attention_precision,
    gpu_catalog,
    model_catalog,
)
from sim.datapath import DataPath
from sim.errors import InputError, one_line
from sim.input_model import InputModel
from sim.memory import MemoryPlan, memory_plan
from sim.parallelism import Parallelism, check_layout
from sim.perf.config import PerfCfg
from sim.speculation import Speculative, check_against_target, drafter_memory
from sim.yamlio import load_yaml


class _Frozen(InputModel):
    pass


# Upper bounds that keep a simulation finite and its numbers meaningful (each error names the
# limit). Requests cost memory (about 2 kB each in the engine), so counts are bounded too.
MAX_DURATION_S = 1e8                # about three years of simulated time
MAX_RATE_PER_S = 1e5                # requests per second into one deployment
MAX_RATE_SCALE = 1e6                # trace speed-up
MAX_TOKENS = 10_000_000             # tokens in one prompt or output (above every model's context)
MAX_REQUESTS = 10_000_000           # requests one run may create (about 2 GB and 2 minutes per million)
MAX_CLIENTS = 100_000               # each client is a process of its own (100,000: about 1 GB)
MAX_REPLICAS = 20_000               # the least-load routers scan every replica per request
MAX_CV = 100.0
MAX_LATENCY_S = 1e6                 # SLO targets, front-end times
MAX_SEGMENT_PASSES = 1_000_000      # piecewise segments a repeating cycle may be cut into


# ---- workload ---------------------------------------------------------------------------------

class Poisson(_Frozen):
    kind: Literal["poisson"]
    rate_per_s: float = Field(gt=0, le=MAX_RATE_PER_S)


class GammaArrivals(_Frozen):
    """Renewal process with Gamma inter-arrival times: cv > 1 is burstier than Poisson."""

    kind: Literal["gamma"]
    rate_per_s: float = Field(gt=0, le=MAX_RATE_PER_S)
    cv: float = Field(gt=0, le=MAX_CV, description="coefficient of variation of inter-arrival times")


class RateSegment(_Frozen):
    # At least 1 ms, so that simulated time really advances segment by segment.
    duration_s: float = Field(ge=1e-3, le=MAX_DURATION_S)
    rate_per_s: float = Field(ge=0, le=MAX_RATE_PER_S)


class Piecewise(_Frozen):
    """Poisson arrivals whose rate is constant within each segment; `repeat` cycles them."""

    kind: Literal["piecewise"]
    segments: list[RateSegment] = Field(min_length=1)
    repeat: bool = True


class Diurnal(_Frozen):
    """Poisson with rate(t) = mean x (1 + amplitude x sin(2 pi (t + phase) / period))."""

    kind: Literal["diurnal"]
    mean_rate_per_s: float = Field(gt=0, le=MAX_RATE_PER_S)
    amplitude: float = Field(ge=0, le=1)
    period_s: float = Field(default=86400.0, ge=1e-3, le=MAX_DURATION_S)
    phase_s: float = Field(default=0.0, ge=-MAX_DURATION_S, le=MAX_DURATION_S)


class Offline(_Frozen):
    """All `requests` arrive at t = 0, as offline max-throughput benchmarks submit them."""

    kind: Literal["offline"]
    requests: int = Field(ge=1, le=MAX_REQUESTS)


class ClosedLoop(_Frozen):
    """N clients, each sends a request, waits for its last token, thinks, and repeats."""

    kind: Literal["closed_loop"]
    clients: int = Field(ge=1, le=MAX_CLIENTS)
    think_time_s: float = Field(default=0.0, ge=0, le=MAX_DURATION_S)
    think_time_dist: Literal["fixed", "exponential"] = "fixed"


Arrivals = Annotated[Poisson | GammaArrivals | Piecewise | Diurnal | Offline | ClosedLoop, Field(discriminator="kind")]


class FixedLen(_Frozen):
    kind: Literal["fixed"]
    value: int = Field(ge=1, le=MAX_TOKENS)


class UniformLen(_Frozen):
    """Integers uniform on [low, high] inclusive."""

    kind: Literal["uniform"]
    low: int = Field(ge=1, le=MAX_TOKENS)
    high: int = Field(ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _order(self) -> UniformLen:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) < low ({self.low})")
        return self


class LognormalLen(_Frozen):
    """Lognormal with the given mean and coefficient of variation, rounded to integers >= 1."""

    kind: Literal["lognormal"]
    mean: float = Field(gt=0, le=MAX_TOKENS)
    cv: float = Field(gt=0, le=MAX_CV)


class EmpiricalLen(_Frozen):
    """Resample (with replacement) a column of a CSV file, e.g. lengths from a real trace."""

    kind: Literal["empirical"]
    path: DataPath
    column: str


LengthDist = Annotated[FixedLen | UniformLen | LognormalLen | EmpiricalLen, Field(discriminator="kind")]


class Trace(_Frozen):
    """Replay a request trace: Azure LLM inference CSV or Mooncake JSONL."""

    format: Literal["azure", "mooncake"]
    path: DataPath
    rate_scale: float = Field(default=1.0, ge=1e-6, le=MAX_RATE_SCALE, description="2.0 replays twice as fast")
    start_s: float = Field(default=0.0, ge=0, le=MAX_DURATION_S, description="skip this much of the trace's start")
    spread_s: float | None = Field(
        default=None, ge=0, le=MAX_DURATION_S,
        description="the trace's timestamp resolution: requests sharing a timestamp arrive spread uniformly over "
        "the next spread_s seconds (before rate_scale); default: the median gap between distinct timestamps for "
        "Mooncake traces (quantized to ticks of about 3 s), 0 for Azure ones")


class Sessions(_Frozen):
    """Multi-turn chat sessions: each turn's prompt is the system prompt, every earlier turn (user
    message and answer) and the new user message, so the context grows turn by turn; the next
    turn is sent a think time after the last token of the answer."""

    rate_per_s: float = Field(gt=0, le=MAX_RATE_PER_S, description="new sessions per second (Poisson)")
    turns: LengthDist = Field(description="turns per session")
    think_time_s: float = Field(default=0.0, ge=0, le=MAX_DURATION_S, description="mean think time between turns (exponential)")
    system_prompt_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)
    system_prompts: int = Field(default=1, ge=1, le=1_000_000, description="distinct system prompts; each session picks one uniformly")
    user_tokens: LengthDist = Field(description="tokens of each turn's new user message")
    output_tokens: LengthDist


class SharedPrefix(_Frozen):
    """A shared-prefix model for workloads without prompt hashes (Azure traces, synthetic lengths):
    a share of the requests start with one of a few common prefixes (system prompts, few-shot
    examples), the rest of every prompt is its own."""

    tokens: int = Field(ge=1, le=MAX_TOKENS, description="length of each shared prefix (cut at the prompt's length)")
    prefixes: int = Field(default=1, ge=1, le=1_000_000, description="distinct shared prefixes, picked uniformly")
    fraction: float = Field(default=1.0, ge=0, le=1, description="share of requests that start with one")


class Workload(_Frozen):
    arrivals: Arrivals | None = None
    input_tokens: LengthDist | None = None
    output_tokens: LengthDist | None = None
    trace: Trace | None = None
    sessions: Sessions | None = None
    shared_prefix: SharedPrefix | None = None
    cache_salt_fraction: float = Field(
        default=0.0, ge=0, le=1, description="with prefix caching: the share of requests (drawn at random) that carry "
        "their own cache salt, as vLLM's per-request cache_salt isolates tenants: they reuse no cached prefix and "
        "leave none for others")

    @model_validator(mode="after")
    def _one_source(self) -> Workload:
        if self.sessions is not None:
            given = [k for k in ("arrivals", "input_tokens", "output_tokens", "trace", "shared_prefix")
                     if getattr(self, k) is not None]
            if given:
                raise ValueError(f"workload.sessions gives the arrivals and lengths: drop {given}")
            return self
        if self.shared_prefix is not None and self.trace is not None and self.trace.format == "mooncake":
            raise ValueError("workload.shared_prefix: a Mooncake trace carries its prompts' hash_ids; the model is "
                             "for workloads without them")
        if self.trace is not None:
            if self.input_tokens is not None or self.output_tokens is not None:
                raise ValueError("workload.trace gives the lengths: drop input_tokens/output_tokens")
            if self.arrivals is not None and self.arrivals.kind != "closed_loop":
                raise ValueError("workload.trace gives the arrival times: drop arrivals (or use closed_loop)")
        else:
            missing = [k for k in ("arrivals", "input_tokens", "output_tokens") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"workload needs either a trace or all of arrivals/input_tokens/output_tokens; missing {missing}")
        return self

    def longest_request_tokens(self) -> int | None:
        """The most tokens (prompt + output) any request can have, where the length distributions
        bound it (fixed or uniform); None for unbounded ones and traces."""
        bounds = [d.value if isinstance(d, FixedLen) else d.high if isinstance(d, UniformLen) else None
                  for d in (self.input_tokens, self.output_tokens)]
        if self.sessions is not None:
            return None
        return None if self.trace is not None or None in bounds else sum(b for b in bounds if b is not None)


# ---- hardware, serving ----------------------------------------------------------------------

class Hardware(_Frozen):
    gpu: GpuSpec
    price_usd_per_gpu_h: float | None = Field(default=None, gt=0, le=10_000)

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        overrides = data.pop("overrides", None) or {}
        gpu = data.get("gpu")
        if isinstance(gpu, str):
            cat = gpu_catalog()
            if gpu not in cat:
                raise ValueError(f"unknown GPU {gpu!r}; catalog has: {', '.join(cat)}")
            base = cat[gpu].model_dump()
        elif isinstance(gpu, dict):
            base = dict(gpu)
        else:
            return data
        if not isinstance(overrides, dict):
            raise ValueError(f"overrides must be a mapping, got {overrides!r}")
        data["gpu"] = _merge(base, overrides)
        return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` applied key by key, recursing into mappings (so `tflops: {fp8: 3000}`
    changes one precision and keeps the others)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class PrecisionCfg(_Frozen):
    weights: Precision = "bf16"
    kv_cache: Precision = "bf16"
    compute: Precision | None = Field(default=None, description="defaults to the weights precision")
    attention: AttentionPrecision | None = Field(
        default=None, description="precision of the attention kernels; default FP8 where the KV cache is FP8 "
        "and the GPU has FP8, else BF16")

    @property
    def compute_precision(self) -> str:
        return self.compute or self.weights

    def attention_precision(self, gpu: GpuSpec) -> str:
        return self.attention or default_attention_precision(gpu, self.kv_cache)


class Batching(_Frozen):
    max_num_seqs: int = Field(default=256, ge=1, le=1_000_000)
    max_num_batched_tokens: int = Field(default=8192, ge=1, le=100_000_000)
    chunked_prefill: bool = True
    whole_prompts: Literal["separate", "mixed"] = Field(
        default="separate", description="without chunked prefill: 'separate' runs prefill-only iterations "
        "(vLLM V0), 'mixed' adds whole prompts to the decodes' iteration (TensorRT-LLM in-flight batching)")
    max_waiting: int = Field(default=4096, ge=1, le=MAX_REQUESTS, description="bounded waiting queue per replica (online traffic; offline bursts are queued whole)")
    preemption: Literal["recompute", "swap"] = "recompute"
    admission: Literal["optimistic", "no_evict", "conservative"] = Field(
        default="optimistic", description="optimistic: admit while the next chunk fits, preempt when KV runs out "
        "(vLLM); no_evict: admit only when every running request's whole output fits (TensorRT-LLM's default); "
        "conservative: reserve a decaying share of the running requests' outputs (SGLang)")

    overlap_host_work: bool = Field(
        default=False, description="the engine prepares the next iteration on the host while the GPU runs this "
        "one (TensorRT-LLM's overlap scheduler, SGLang's zero-overhead scheduler, vLLM's --async-scheduling): "
        "perf.host_overhead_s and host_overhead_per_seq_s are hidden instead of added to each iteration")

    @model_validator(mode="after")
    def _check(self) -> Batching:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}) so every running sequence can decode each step"
            )
        return self


TIER_ORDER = ("host_dram", "nvme", "remote")


class KvTier(_Frozen):
    """A KV-cache tier below HBM (sim/engine/kv_tiers.py). Unset fields take the defaults of
    sim/data/kv_tiers.yaml and the GPU catalog, with their sources."""

    kind: Literal["host_dram", "nvme", "remote"]
    capacity_gb: float | None = Field(default=None, gt=0, le=1e9, description="per node (host_dram, nvme) or for the "
                                      "whole pool (remote), GB (1e9 bytes)")
    read_gb_s: float | None = Field(default=None, gt=0, le=1e6, description="tier -> GPU, GB/s, per GPU or per node (link)")
    write_gb_s: float | None = Field(default=None, gt=0, le=1e6, description="GPU -> tier, GB/s, per GPU or per node (link)")
    latency_s: float | None = Field(default=None, ge=0, le=1.0, description="added to every transfer")
    link: Literal["per_gpu", "per_node"] | None = Field(
        default=None, description="per_gpu: each GPU has its own link (PCIe, C2C, NIC); per_node: one shared by the node's GPUs")
    write: Literal["through", "on_evict"] | None = Field(
        default=None, description="chunks enter when the tier above gets them (through) or when it evicts them")
    capex_usd_per_gb: float | None = Field(default=None, ge=0, le=10_000, description="purchase price, priced in TCO mode")


class KvCacheCfg(_Frozen):
    block_tokens: int = Field(default=16, ge=1, le=4096)
    gpu_memory_fraction: float = Field(default=0.90, gt=0, le=1)
    activation_reserve_gb: float | None = Field(
        default=None, ge=0, description="per-GPU memory kept for activations; default derived from the batch"
    )
    watermark_fraction: float = Field(default=0.01, ge=0, lt=1)
    prefix_caching: bool = Field(default=False, description="reuse prompt prefixes: HBM automatic prefix caching, "
                                 "then the tiers below")
    prefix_chunk_tokens: int = Field(default=512, ge=1, le=65_536, description="tokens per hashed prefix chunk "
                                     "(Mooncake's hash_ids: 512)")
    prefix_load: Literal["overlap", "stall"] = Field(
        default="overlap", description="overlap: a request waits for its loads while the batch runs on; stall: the "
        "iteration that admits it waits")
    tiers: list[KvTier] = Field(default_factory=list, max_length=3, description="tiers below HBM, fastest first")

    @model_validator(mode="after")
    def _tiers_in_order(self) -> KvCacheCfg:
        kinds = [t.kind for t in self.tiers]
        ranks = [TIER_ORDER.index(k) for k in kinds]
        if ranks != sorted(set(ranks)):
            raise ValueError(f"serving.kv_cache.tiers: {kinds} are out of order or repeated; list each kind once, "
                             f"fastest first: {' -> '.join(TIER_ORDER)}")
        if self.prefix_caching and self.prefix_chunk_tokens % self.block_tokens:
            raise ValueError(f"serving.kv_cache.prefix_chunk_tokens={self.prefix_chunk_tokens} must be a multiple of "
                             f"block_tokens={self.block_tokens} (a chunk is whole KV blocks)")
        return self


class Frontend(_Frozen):
    """Per-request work outside the GPU iterations (API server): it adds to TTFT and E2E."""

    tokenize_s: float = Field(default=0.0, ge=0, le=MAX_LATENCY_S, description="fixed part of tokenizing the prompt")
    tokenize_s_per_1k_tokens: float = Field(default=0.0, ge=0, le=MAX_LATENCY_S, description="per 1,000 prompt tokens")
    schedule_s: float = Field(default=0.0, ge=0, le=MAX_LATENCY_S, description="request admission, routing, queue hand-off")
    detokenize_s: float = Field(default=0.0, ge=0, le=MAX_LATENCY_S, description="detokenize and stream a token to the client")

    def overhead_s(self, input_tokens):  # works on ints and numpy arrays
        """Latency a request's first (and last) token carries on top of the engine's."""
        return self.tokenize_s + self.tokenize_s_per_1k_tokens * input_tokens / 1000.0 + self.schedule_s \
            + self.detokenize_s


#: What `serving.engine` sets, under anything the scenario sets itself (docs/model-assumptions.md,
#: "Engines", has each default's source).
ENGINE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "vllm": {"batching": {"chunked_prefill": True, "admission": "optimistic", "overlap_host_work": False}},
    "trtllm": {"batching": {"chunked_prefill": False, "whole_prompts": "mixed", "admission": "no_evict",
                            "overlap_host_work": True}},
    "sglang": {"batching": {"chunked_prefill": True, "admission": "conservative", "overlap_host_work": True}},
}


class Serving(_Frozen):
    engine: Literal["vllm", "trtllm", "sglang"] | None = Field(
        default=None, description="serving engine whose scheduling defaults apply (any can still be set)")
    precision: PrecisionCfg = PrecisionCfg()
    parallelism: Parallelism = Parallelism()
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    batching: Batching = Batching()
    kv_cache: KvCacheCfg = KvCacheCfg()
    router: Literal["round_robin", "least_outstanding", "least_kv_load", "cache_aware"] = "least_outstanding"
    frontend: Frontend = Frontend()
    role: Literal["mixed", "decode"] = Field(
        default="mixed", description="mixed: the replicas prefill and decode; decode: a disaggregated decode "
        "pool whose requests arrive with their prompt's KV and first token from a prefill pool (a prefill "
        "pool is a mixed pool whose requests ask for one output token)")

    @model_validator(mode="before")
    @classmethod
    def _engine_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("engine") not in ENGINE_PRESETS:
            return data
        preset = ENGINE_PRESETS[data["engine"]]
        batching = data.get("batching") or {}
        if not isinstance(batching, dict):
            return data       # the field's own validation names the problem
        return {**data, "batching": {**preset["batching"], **batching}}


class Slo(_Frozen):
    ttft_s: float = Field(default=2.0, gt=0, le=MAX_LATENCY_S)
    tpot_s: float = Field(default=0.1, gt=0, le=MAX_LATENCY_S)
    percentile: float = Field(default=99.0, gt=0, le=100)


class Tco(_Frozen):
    capex_usd_per_gpu: float = Field(gt=0, le=10_000_000, description="purchase price per GPU incl. its share of the server")
    amortization_years: float = Field(default=5.0, ge=0.1, le=50)
    hosting_usd_per_kw_month: float = Field(default=200.0, ge=0, le=100_000)
    other_opex_usd_per_gpu_h: float = Field(default=0.0, ge=0, le=10_000)


class TokenPriceRatios(_Frozen):
    """Relative prices of the three token classes, as an API price list sets them; only their
    ratios matter. Default: DeepSeek's API list for deepseek-chat, $ per 1M tokens: input on a
    cache miss 0.27, on a cache hit 0.07, output 1.10 (api-docs.deepseek.com/quick_start/pricing-details-usd)."""

    input: float = Field(default=0.27, gt=0, le=1e6, description="uncached input (a cache miss)")
    cached_input: float = Field(default=0.07, ge=0, le=1e6, description="input served from a prefix cache (a hit)")
    output: float = Field(default=1.10, gt=0, le=1e6)


class Cost(_Frozen):
    mode: Literal["rental", "tco"] = "rental"
    price_tier: Literal["hyperscaler", "neocloud", "rental"] = "rental"
    electricity_usd_per_kwh: float = Field(default=0.08, ge=0, le=100)
    pue: float = Field(default=1.2, ge=1, le=10)
    power_model: Literal["utilization", "busy"] = Field(
        default="utilization", description="chip power follows the binding resource's utilization (sim/power.py), "
        "or the busy fraction (every busy second at TDP)")
    tco: Tco | None = None
    token_price_ratios: TokenPriceRatios = Field(
        default_factory=TokenPriceRatios, description="how the cost splits over uncached input, cached input and "
        "output tokens for the per-class $/M figures")

    @model_validator(mode="after")
    def _check(self) -> Cost:
        if self.mode == "tco" and self.tco is None:
            raise ValueError("cost.mode 'tco' needs a cost.tco block (capex_usd_per_gpu, ...)")
        return self


def expected_requests(arrivals: Any, duration_s: float) -> float:
    """Mean number of open-loop arrivals in [0, duration_s) (0 for closed loop and traces)."""
    if isinstance(arrivals, Poisson | GammaArrivals):
        return arrivals.rate_per_s * duration_s
    if isinstance(arrivals, Diurnal):
        return arrivals.mean_rate_per_s * duration_s
    if isinstance(arrivals, Piecewise):
        cycle_s = sum(seg.duration_s for seg in arrivals.segments)
        mean = sum(seg.duration_s * seg.rate_per_s for seg in arrivals.segments) / cycle_s
        return mean * (duration_s if arrivals.repeat else min(duration_s, cycle_s))
    if isinstance(arrivals, Offline):
        return float(arrivals.requests)
    return 0.0


class Scenario(_Frozen):
    # A file name of its own under results/: no "." or "..", no path separators, not too long.
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    seed: int = Field(default=0, ge=0)
    duration_s: float = Field(gt=0, le=MAX_DURATION_S, description="arrivals stop here; in-flight requests finish")
    warmup_s: float = Field(default=0.0, ge=0, le=MAX_DURATION_S)
    drain_timeout_s: float = Field(default=3600.0, ge=0, le=MAX_DURATION_S, description="max simulated time after duration_s")
    window: Literal["arrivals", "makespan"] | None = Field(
        default=None, description="what the throughput, utilization and cost figures measure: [warmup_s, "
        "duration_s) ('arrivals', the default for online traffic) or from warmup_s to the last token "
        "('makespan', the default for offline bursts)")
    model: ModelSpec
    hardware: Hardware
    serving: Serving = Serving()
    workload: Workload
    slo: Slo = Slo()
    cost: Cost = Cost()
    perf: PerfCfg = Field(default_factory=PerfCfg)
    speculative: Speculative | None = Field(
        default=None, description="speculative decoding or multi-token prediction (sim/speculation.py)")

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> Any:
        if isinstance(v, str):
            cat = model_catalog()
            if v not in cat:
                raise ValueError(f"unknown model {v!r}; catalog has: {', '.join(cat)}")
            return cat[v]
        return v

    @model_validator(mode="after")
    def _cross(self) -> Scenario:
        m, g, s = self.model, self.hardware.gpu, self.serving
        tp = s.parallelism.tp
        if self.warmup_s >= self.duration_s:
            raise ValueError(f"warmup_s ({self.warmup_s}) must be < duration_s ({self.duration_s})")
        arr = self.workload.arrivals
        if isinstance(arr, Piecewise) and arr.repeat:
            cycle_s = sum(seg.duration_s for seg in arr.segments)
            passes = self.duration_s / cycle_s * len(arr.segments)
            if passes > MAX_SEGMENT_PASSES:
                raise ValueError(f"workload.arrivals.segments: a cycle of {cycle_s:g} s repeats over duration_s="
                                 f"{self.duration_s:g} s as {passes:,.0f} segments; at most {MAX_SEGMENT_PASSES:,} "
                                 "(lengthen the segments)")
        expected = expected_requests(self.workload.arrivals, self.duration_s)
        if expected > MAX_REQUESTS:
            raise ValueError(f"workload.arrivals: about {expected:,.0f} requests arrive in duration_s={self.duration_s:g} s; "
                             f"one run simulates at most {MAX_REQUESTS:,} (shorten duration_s or lower the rate)")
        if isinstance(self.workload.arrivals, Offline) and self.warmup_s > 0:
            raise ValueError(f"warmup_s ({self.warmup_s}) must be 0 with offline arrivals: every request arrives "
                             "at t = 0, so a warm-up would exclude them all; the window is the makespan")
        check_layout(s.parallelism, m, g)
        self._check_simulated_combinations()
        from sim.kv_hierarchy import check_kv_hierarchy  # it builds on this module
        check_kv_hierarchy(self)
        p = s.precision
        if g.peak_flops(p.compute_precision) is None:
            raise ValueError(
                f"serving.precision.compute={p.compute_precision!r}: GPU {g.name!r} has no {p.compute_precision} tensor cores"
            )
        if p.attention is not None and g.peak_flops(p.attention) is None:
            raise ValueError(f"serving.precision.attention={p.attention!r}: GPU {g.name!r} has no {p.attention} "
                             "tensor cores")
        # FP4 weights alone run on any GPU (weight-only quantization, dequantized to the compute
        # precision); FP4 compute and an FP4 KV cache need FP4 tensor-core support.
        for field in ("kv_cache", "compute"):
            if getattr(p, field) == "fp4" and g.tflops.fp4 is None:
                raise ValueError(f"serving.precision.{field}='fp4': GPU {g.name!r} has no FP4 support")
        c = self.cost
        if c.mode == "rental" and self.hardware.price_usd_per_gpu_h is None \
                and getattr(g.prices_usd_per_gpu_h, c.price_tier) is None:
            raise ValueError(
                f"cost.price_tier={c.price_tier!r}: GPU {g.name!r} has no such catalog price; "
                "set hardware.price_usd_per_gpu_h or pick another tier"
            )
        if self.speculative is not None:
            check_against_target(self.speculative, m, tp)
            q = self.speculative.k + 1
            b = s.batching
            if b.max_num_batched_tokens < b.max_num_seqs * q:
                raise ValueError(
                    f"serving.batching.max_num_batched_tokens ({b.max_num_batched_tokens}) must be >= max_num_seqs "
                    f"({b.max_num_seqs}) x (speculative.k + 1) = {b.max_num_seqs * q}: every decoding sequence "
                    f"verifies k + 1 = {q} tokens per step within the iteration's token budget")
        mem = self.memory_plan()
        if mem.kv_blocks < 1 and self.speculative is not None:
            draft_gb = mem.weights_gb_per_gpu - self.memory_plan(with_drafter=False).weights_gb_per_gpu
            raise ValueError(
                f"model does not fit: {m.name} with speculative.method={self.speculative.method!r} (k="
                f"{self.speculative.k}) needs {mem.weights_gb_per_gpu:.1f} GB of weights per GPU (of which "
                f"{draft_gb:.1f} GB the drafter's) + {mem.activation_gb_per_gpu:.1f} GB activations, but "
                f"serving.kv_cache.gpu_memory_fraction={s.kv_cache.gpu_memory_fraction} of {g.hbm_gb} GB leaves no "
                "room for KV cache (raise tp, lower precision, or use a smaller drafter or k)")
        if mem.kv_blocks < 1:
            raise ValueError(
                f"model does not fit: {m.name} needs {mem.weights_gb_per_gpu:.1f} GB of weights per GPU "
                f"+ {mem.activation_gb_per_gpu:.1f} GB activations, but serving.kv_cache.gpu_memory_fraction="
                f"{s.kv_cache.gpu_memory_fraction} of {g.hbm_gb} GB leaves no room for KV cache (raise tp or lower precision"
                + (", or spread the experts over more GPUs with ep and dp_attention)" if m.moe else ")")
            )
        return self

    @property
    def window_kind(self) -> str:
        """The measurement window: the scenario's `window`, else makespan for offline bursts and
        the arrival period otherwise."""
        if self.window is not None:
            return self.window
        return "makespan" if isinstance(self.workload.arrivals, Offline) else "arrivals"

    @property
    def gpus(self) -> int:
        return self.serving.replicas * self.serving.parallelism.gpus

    def _check_simulated_combinations(self) -> None:
        """Features the engine does not combine yet: refused with what is missing, not ignored."""
        s = self.serving
        par = s.parallelism
        # (applies, the setting, why drafts are not priced with it, why a step table cannot price it)
        limits = ((par.dp_attention > 1, f"serving.parallelism.dp_attention={par.dp_attention}",
                   "", "ranks stepping together"),
                  (par.pp > 1, f"serving.parallelism.pp={par.pp}",
                   "its draft passes are not priced through pipeline stages", "pipeline stages"),
                  (s.role == "decode", "serving.role: decode", "", ""))
        for applies, setting, no_drafts, no_table in limits:
            if not applies:
                continue
            if no_drafts and self.speculative is not None:
                raise ValueError(f"speculative: with {setting}, speculative decoding is not simulated ({no_drafts})")
            if no_table and self.perf.step_table is not None:
                raise ValueError(f"perf.step_table: a measured step table prices one batch of one replica; it cannot "
                                 f"price {setting} ({no_table})")

    def memory_plan(self, with_drafter: bool = True) -> MemoryPlan:
        """How each GPU's HBM splits into weights, activations and KV blocks (sim/memory.py);
        `with_drafter=False`: as if the speculative drafter were not there."""
        s = self.serving
        drafter = (0.0, 0.0) if self.speculative is None or not with_drafter else drafter_memory(
            self.speculative, self.model, weights=s.precision.weights, kv_cache=s.precision.kv_cache,
            tp=s.parallelism.tp)
        return memory_plan(self.model, self.hardware.gpu, par=s.parallelism, weights=s.precision.weights,
                           kv_cache=s.precision.kv_cache, block_tokens=s.kv_cache.block_tokens,
                           gpu_memory_fraction=s.kv_cache.gpu_memory_fraction,
                           activation_reserve_gb=s.kv_cache.activation_reserve_gb,
                           max_num_seqs=s.batching.max_num_seqs,
                           max_num_batched_tokens=s.batching.max_num_batched_tokens,
                           drafter_weight_bytes=drafter[0], drafter_kv_bytes_per_token=drafter[1],
                           longest_request_tokens=self.workload.longest_request_tokens())


def format_validation_error(err: ValidationError, source: str, prefix: str = "") -> str:
    lines = []
    for e in err.errors(include_url=False):
        path = ".".join(str(x) for x in e["loc"] if not (isinstance(x, str) and x in _UNION_TAGS))
        loc = prefix + path if path else ""
        msg = e["msg"].removeprefix("Value error, ")
        inp = e.get("input")
        shown = "" if isinstance(inp, dict | list) or e["type"] == "missing" else f" (got {inp!r})"
        where = f"{loc}: " if loc else ""
        lines.append(f"{source}: {where}{msg}{shown}")
    return "\n".join(lines)


# Tags pydantic inserts into error locations for discriminated unions; not user field names.
_UNION_TAGS = {"poisson", "gamma", "piecewise", "diurnal", "offline", "closed_loop", "fixed", "uniform", "lognormal", "empirical",
               "GpuSpec", "ModelSpec"}


def scenario_from_dict(data: Any, source: str = "scenario", base_dir: str | Path | None = None) -> Scenario:
    """Validate a mapping into a Scenario; raise InputError with one line per problem."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: the file must hold a mapping of scenario keys, got {type(data).__name__}")
    try:
        return Scenario.model_validate(data, context={"base_dir": str(base_dir) if base_dir else None})
    except ValidationError as err:
        raise InputError(format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning I/O and syntax problems into InputError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{p}: cannot read: {one_line(err)}") from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise InputError(f"{p}: malformed YAML{where}: {problem}") from None


#: Scenario keys that set the offered load (one per kind of workload; plan.load_knob picks one).
LOAD_KNOB_PATHS = ("workload.arrivals.rate_per_s", "workload.arrivals.mean_rate_per_s", "workload.arrivals.clients",
                   "workload.trace.rate_scale")

#: Blocks a scenario file may carry for other commands (sweep and plan files are scenarios plus one).
COMMAND_BLOCKS = ("sweep", "plan")


def read_scenario_file(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a scenario, sweep or plan file: (scenario data with the dotted `overrides` applied,
    {block name: block} of the command blocks it carried). Validation is the caller's."""
    p = Path(path)
    data = read_yaml(p)
    if not isinstance(data, dict):
        raise InputError(f"{p}: the file must hold a mapping of scenario keys, got {type(data).__name__}")
    data = dict(data)
    blocks = {name: data.pop(name) for name in COMMAND_BLOCKS if name in data}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return data, blocks


def load_scenario(path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Load and validate a scenario file. `overrides` maps dotted keys to values
    (e.g. {"duration_s": 60}) applied before validation."""
    data, _ = read_scenario_file(path, overrides)
    return scenario_from_dict(data, source=str(path), base_dir=Path(path).parent)


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set data['a']['b'] for key 'a.b', creating mappings on the way."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        else:
            nxt = dict(nxt)
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value
