"""Calibration: fit the step-time model's physical parameters to measurements.

Parameters fitted (defaults; any subset of PerfCfg's numeric fields can be chosen):
achievable fraction of HBM bandwidth (``hbm_bw_efficiency``) and of dense peak FLOPS
(``compute_efficiency``) by large kernels, fixed time per iteration (``iteration_overhead_s``) and
time per sequence in an iteration (``per_seq_overhead_s``), and the shape efficiencies of
perf/efficiency.py: GEMM tokens at half rate (``gemm_half_tokens``), per-kernel start-up as bytes
per layer (``hbm_half_bytes_per_layer``), fixed time per layer and per MoE layer
(``layer_overhead_s``, ``moe_layer_overhead_s``), and the attention kernels' share of their peak
(``attention_efficiency``), and the share of the link rate the expert all-to-all of attention
ranks reaches (``all_to_all_efficiency``). The same few numbers serve every GPU and model:
no per-point special cases.

Measurements are of two kinds:

* ``step``: one iteration's measured time for a batch shape: `decode_seqs` sequences decoding with
  a mean KV length `context_tokens`, plus a prefill of `prefill_tokens` (0 for pure decode);
  predicted with ``StepModel.iteration_s``.
* ``throughput``: an offline benchmark (`requests` requests of `input_tokens` / `output_tokens`
  submitted at once, as trtllm-bench does) with measured output tokens/s per GPU; predicted by
  simulating it.

Method: minimise sum_i log(predicted_i / measured_i)^2 (relative errors, so a 2,000 tok/s point
weighs like a 27,000 tok/s one) with bounded trust-region least squares
(``scipy.optimize.least_squares``); parameters are scaled to order one and derivatives are taken
with a 2% step, since simulated throughput is piecewise constant at finer scales.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.csvio import read_csv
from sim.errors import InputError
from sim.perf import Chunk, PerfCfg, decode_shape
from sim.scenario import MAX_TOKENS, scenario_from_dict
from sim.yamlio import load_yaml

DEFAULT_PARAMS = ("hbm_bw_efficiency", "compute_efficiency", "iteration_overhead_s", "per_seq_overhead_s",
                  "gemm_half_tokens", "hbm_half_bytes_per_layer", "layer_overhead_s", "moe_layer_overhead_s",
                  "attention_efficiency", "all_to_all_efficiency")
#: (lower, upper, scale) per fittable parameter; the optimiser works on value / scale.
BOUNDS: dict[str, tuple[float, float, float]] = {
    "hbm_bw_efficiency": (0.2, 0.95, 1.0),   # sustained HBM streaming stays below ~95% of the spec
    "compute_efficiency": (0.05, 1.0, 1.0),
    "comm_efficiency": (0.1, 1.0, 1.0),
    "all_to_all_efficiency": (0.05, 1.0, 1.0),
    "all_to_all_scale_out_efficiency": (0.05, 1.0, 1.0),
    "iteration_overhead_s": (0.0, 0.05, 1e-3),
    "per_seq_overhead_s": (0.0, 5e-4, 1e-5),
    "collective_latency_s": (0.0, 1e-4, 1e-5),
    "activation_traffic_factor": (0.0, 10.0, 1.0),
    "gemm_half_tokens": (0.0, 4096.0, 100.0),
    "attention_efficiency": (0.05, 1.0, 1.0),
    "host_overhead_s": (0.0, 0.05, 1e-3),
    "host_overhead_per_seq_s": (0.0, 5e-4, 1e-5),
    "hbm_half_bytes_per_layer": (0.0, 1e9, 1e7),
    "layer_overhead_s": (0.0, 1e-3, 1e-5),
    "moe_layer_overhead_s": (0.0, 1e-3, 1e-5),
}
CONFIG_COLS = ("model", "gpu", "tp", "weights", "kv_cache", "compute")
#: Optional layout columns of a measurement (absent: 1): attention data-parallel ranks and expert
#: parallelism, as in TensorRT-LLM's "DEP4" = dp_attention 4, ep 4, tp 1 (sim/parallelism.py).
LAYOUT_COLS = ("dp_attention", "ep")
ADMISSIONS = ("optimistic", "no_evict", "conservative")
ENGINES = ("vllm", "trtllm", "sglang")


@dataclass(frozen=True)
class Measurement:
    id: str
    kind: str                      # "step" or "throughput"
    config: dict[str, Any]         # model, gpu, tp, weights, kv_cache, compute (+ attention, dp_attention, ep)
    measured: float                # step_time_s, or output tokens/s per GPU
    decode_seqs: int = 0
    context_tokens: int = 0
    prefill_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    max_num_seqs: int = 2048
    max_num_batched_tokens: int = 8192
    engine: str | None = None       # the serving engine's scheduling defaults (serving.engine)
    admission: str | None = None    # its admission policy, if set apart from the engine's
    chunked_prefill: bool | None = None   # chunked prefill, if set apart from the engine's


def scenario_data(m: Measurement, perf: dict[str, Any]) -> dict[str, Any]:
    c = m.config
    return {
        "name": re.sub(r"[^A-Za-z0-9._-]", "_", f"calibrate-{m.id}")[:60],   # ids are free text
        "duration_s": 1.0,
        "drain_timeout_s": 1e7,
        "model": c["model"],
        "hardware": {"gpu": c["gpu"], "price_usd_per_gpu_h": 1.0},
        "serving": {"precision": {"weights": c["weights"], "kv_cache": c["kv_cache"], "compute": c["compute"],
                                  **({"attention": c["attention"]} if c.get("attention") else {})},
                    "parallelism": {"tp": int(c["tp"]),
                                    **{k: int(c[k]) for k in LAYOUT_COLS if int(c.get(k, 1)) > 1}},
                    "batching": {"max_num_seqs": m.max_num_seqs, "max_num_batched_tokens": m.max_num_batched_tokens,
                                 **({"admission": m.admission} if m.admission else {}),
                                 **({"chunked_prefill": m.chunked_prefill} if m.chunked_prefill is not None else {})},
                    **({"engine": m.engine} if m.engine else {}),
                    "kv_cache": {"gpu_memory_fraction": 0.9}},
        "workload": {"arrivals": {"kind": "offline", "requests": max(1, m.requests)},
                     "input_tokens": {"kind": "fixed", "value": max(1, m.input_tokens)},
                     "output_tokens": {"kind": "fixed", "value": max(1, m.output_tokens)}},
        "perf": perf,
    }


def predict(m: Measurement, perf: dict[str, Any]) -> float:
    """The model's value for a measurement under perf parameters `perf`."""
    from sim.runner import ranked_pricing_for, run, step_model_for

    sc = scenario_from_dict(scenario_data(m, perf), source=f"measurement {m.id}")
    if m.kind == "step":
        chunks = [Chunk(0, m.prefill_tokens, True)] if m.prefill_tokens else []
        shape = decode_shape(m.decode_seqs, m.decode_seqs * m.context_tokens, chunks)
        model = step_model_for(sc)
        ranked = ranked_pricing_for(sc, model)
        # with attention ranks, every rank runs the measured batch (decode_seqs is per rank)
        return ranked.iteration_s([shape] * sc.serving.parallelism.dp_attention) if ranked else model.iteration_s(shape)
    res = run(sc)
    if not res.summary["requests_completed"]:
        reasons = res.requests["reject_reason"].value_counts()
        why = ", ".join(f"{n} {reason}" for reason, n in reasons.items() if reason) or "none finished"
        raise InputError(f"measurement {m.id}: the simulated benchmark completes no request ({why}); check its "
                         "lengths against the model's context, the KV cache and the token budget")
    return float(res.summary["output_tok_per_s_per_gpu_makespan"])


@dataclass
class Fit:
    params: dict[str, float]                 # fitted values
    base: dict[str, Any]                     # every perf parameter used (fitted + fixed)
    table: pd.DataFrame                      # id, kind, measured, predicted, error (relative)
    rms_log_error: float
    evaluations: int
    notes: list[str] = field(default_factory=list)


def error_table(ms: list[Measurement], perf: dict[str, Any], preds: list[float] | None = None) -> pd.DataFrame:
    """Measured against predicted per measurement (`preds`: predictions already made under `perf`)."""
    preds = [predict(m, perf) for m in ms] if preds is None else preds
    return pd.DataFrame([{"id": m.id, "kind": m.kind, **m.config, "measured": m.measured, "predicted": pred,
                          "error": pred / m.measured - 1.0} for m, pred in zip(ms, preds, strict=True)])


#: Most least-squares steps of a fit (scipy's max_nfev; Jacobians by finite differences come on top).
MAX_STEPS = 200


def max_evaluations(n_params: int) -> int:
    """Most model evaluations a fit of `n_params` parameters spends (each simulates every throughput
    measurement once): the probe of which parameters matter, then per step one evaluation and a
    finite-difference Jacobian of one per parameter."""
    return (n_params + 1) * (MAX_STEPS + 1)


def check_params(params: tuple[str, ...]) -> None:
    """InputError unless `params` names fittable parameters, each once."""
    if not params:
        raise InputError("calibrate --params: no parameters to fit")
    twice = sorted({p for p in params if params.count(p) > 1})
    if twice:
        raise InputError(f"calibrate --params: {twice} named more than once")
    unknown = [p for p in params if p not in BOUNDS]
    if unknown:
        raise InputError(f"calibrate --params: cannot fit {unknown}; choose from {sorted(BOUNDS)}")


def _predict_pair(args: tuple[Measurement, dict[str, Any]]) -> float:
    return predict(*args)


def _nudged(name: str, value: float) -> float:
    """A value of parameter `name` clearly apart from `value` and within its bounds."""
    low, high, scale = BOUNDS[name]
    step = max(abs(value), scale) * 0.25
    return value + step if value + step <= high else value - step


def fit(ms: list[Measurement], params: tuple[str, ...] = DEFAULT_PARAMS,
        start: dict[str, Any] | None = None, progress: Callable[[int], None] | None = None,
        executor: Executor | None = None) -> Fit:
    """Least-squares fit of `params` (log residuals) starting from `start` (default: PerfCfg
    defaults). `progress(evaluations)` is called after each model evaluation; with `executor`
    the measurements of one evaluation are predicted in parallel."""
    from scipy.optimize import least_squares

    if not ms:
        raise InputError("calibrate: no measurements to fit")
    check_params(params)
    base = PerfCfg().model_dump()
    base.update(start or {})
    # Step rows are priced in microseconds: only simulated throughputs go to the pool.
    slow = [i for i, m in enumerate(ms) if m.kind == "throughput"] if executor is not None else []
    count = 0

    def predictions(perf: dict[str, Any]) -> list[float]:
        preds = dict(zip(slow, executor.map(_predict_pair, [(ms[i], perf) for i in slow]), strict=True)) \
            if executor is not None and slow else {}
        return [preds[i] if i in preds else predict(m, perf) for i, m in enumerate(ms)]

    def residuals_at(perf: dict[str, Any]) -> np.ndarray:
        nonlocal count
        count += 1
        out = np.array([math.log(max(p, 1e-30) / m.measured) for p, m in zip(predictions(perf), ms, strict=True)])
        if progress is not None:
            progress(count)
        return out

    # A parameter no measurement responds to (the MoE layer cost with dense models only) is held at
    # its start: the optimiser would otherwise wander it to an arbitrary value the profile keeps.
    r0 = residuals_at(base)
    blind = [p for p in params
             if np.allclose(residuals_at({**base, p: _nudged(p, float(base[p]))}), r0, rtol=0.0, atol=1e-12)]
    held_notes = [f"{p} held at {float(base[p]):.6g}: no measurement depends on it" for p in blind]
    params = tuple(p for p in params if p not in blind)
    if not params:
        raise InputError("calibrate: none of the chosen parameters changes any prediction for these measurements")
    scales = np.array([BOUNDS[p][2] for p in params])
    lo = np.array([BOUNDS[p][0] for p in params]) / scales
    hi = np.array([BOUNDS[p][1] for p in params]) / scales
    x0 = np.clip(np.array([float(base[p]) for p in params]) / scales, lo + 1e-9, hi - 1e-9)

    def residuals(x: np.ndarray) -> np.ndarray:
        return residuals_at({**base, **dict(zip(params, (x * scales).tolist(), strict=True))})

    sol = least_squares(residuals, x0, bounds=(lo, hi), diff_step=0.02, xtol=1e-4, ftol=1e-6,
                        max_nfev=MAX_STEPS)
    fitted = dict(zip(params, (sol.x * scales).tolist(), strict=True))
    perf = {**base, **fitted}
    table = error_table(ms, perf, predictions(perf))
    rms = float(np.sqrt(np.mean(np.log1p(table["error"].to_numpy()) ** 2)))
    if not math.isfinite(rms):
        raise InputError("calibrate: the model cannot reproduce these measurements (infinite error after the fit); "
                         "no profile written")
    notes = held_notes + ([] if len(ms) > len(params) else [
        f"{len(ms)} measurements for {len(params)} parameters: the fit is not over-determined"])
    if sol.status == 0:
        notes.append(f"the fit stopped at its limit of {MAX_STEPS} steps before converging; its values may "
                     "still move (check the errors, or fit fewer parameters)")
    for name, value in fitted.items():
        low, high, _ = BOUNDS[name]
        # A bound of 0 (no overhead) is a plausible answer; an efficiency on its floor or ceiling is not.
        if (low > 0 and math.isclose(value, low, rel_tol=1e-3)) or math.isclose(value, high, rel_tol=1e-3):
            notes.append(f"{name} = {value:.6g} sits at its bound [{low:g}, {high:g}]: the measurements ask for a "
                         "value the model considers implausible; check them (units, tp, precision)")
    return Fit(fitted, perf, table, rms, count, notes)


# ---- reading measurements --------------------------------------------------------------------

STEP_COLS = ("decode_seqs", "context_tokens", "prefill_tokens", "step_time_s")
THROUGHPUT_COLS = ("input_tokens", "output_tokens", "requests", "output_tok_per_s_per_gpu")
#: Every column a measurements CSV may have (docs/model-assumptions.md, "Calibrating to your own measurements").
CSV_COLUMNS = ("id", "kind", *CONFIG_COLS, "attention", *LAYOUT_COLS, *STEP_COLS, *THROUGHPUT_COLS,
               "max_num_seqs", "max_num_batched_tokens", "engine", "admission")


def read_measurements_csv(path: str | Path) -> list[Measurement]:
    """Parse a measurements CSV (format: docs/model-assumptions.md, 'Calibrating to your data')."""
    p = Path(path)
    df = read_csv(p, "measurements CSV")
    missing = [c for c in ("kind", *CONFIG_COLS) if c not in df.columns]
    if missing:
        raise InputError(f"{p}: missing column(s) {missing}; has {list(df.columns)}")
    unknown = [c for c in df.columns if c not in CSV_COLUMNS]
    if unknown:
        raise InputError(f"{p}: unknown column(s) {unknown}; the columns are {list(CSV_COLUMNS)} (names are "
                         "case-sensitive)")
    out = []
    for i, row in df.iterrows():
        line = int(i) + 2
        kind = row["kind"].strip()
        if kind not in ("step", "throughput"):
            raise InputError(f"{p}: line {line}: column 'kind' must be 'step' or 'throughput', got {kind!r}")
        need = STEP_COLS if kind == "step" else THROUGHPUT_COLS
        absent = [c for c in need if c not in df.columns or row[c].strip() == ""]
        if absent:
            raise InputError(f"{p}: line {line}: a {kind} row needs {list(absent)}")
        nums = {c: _num(p, line, c, row[c], *RANGES[c]) for c in need}
        extra: dict[str, Any] = {c: int(_num(p, line, c, row[c], *RANGES[c]))
                                 for c in ("max_num_seqs", "max_num_batched_tokens") if c in df.columns and row[c].strip()}
        for col, allowed in (("engine", ENGINES), ("admission", ADMISSIONS)):
            if col in df.columns and row[col].strip():
                value = row[col].strip()
                if value not in allowed:
                    raise InputError(f"{p}: line {line}: column {col!r} must be one of {list(allowed)}, got {value!r}")
                extra[col] = value
        config = {c: row[c].strip() for c in CONFIG_COLS}
        if "attention" in df.columns and row["attention"].strip():
            config["attention"] = row["attention"].strip()
        config["tp"] = int(_num(p, line, "tp", row["tp"], *RANGES["tp"]))
        for col in LAYOUT_COLS:
            if col in df.columns and row[col].strip():
                config[col] = int(_num(p, line, col, row[col], *RANGES["tp"]))
        if kind == "step" and nums["decode_seqs"] == 0 and nums["prefill_tokens"] == 0:
            raise InputError(f"{p}: line {line}: a step row needs work: decode_seqs or prefill_tokens > 0")
        mid = row["id"].strip() if "id" in df.columns and row["id"].strip() else f"line{line}"
        if kind == "step":
            m = Measurement(mid, kind, config, nums["step_time_s"], decode_seqs=int(nums["decode_seqs"]),
                            context_tokens=int(nums["context_tokens"]), prefill_tokens=int(nums["prefill_tokens"]),
                            **extra)
        else:
            m = Measurement(mid, kind, config, nums["output_tok_per_s_per_gpu"], input_tokens=int(nums["input_tokens"]),
                            output_tokens=int(nums["output_tokens"]), requests=int(nums["requests"]), **extra)
        try:
            scenario_from_dict(scenario_data(m, {}), source=f"{p}: line {line}")
        except InputError as err:
            raise InputError(str(err)) from None
        out.append(m)
    if not out:
        raise InputError(f"{p}: no measurements")
    return out


#: (lowest, highest, integer) of each numeric column: what the model can represent. Step times
#: from 100 ns to 1,000 s, throughputs up to 10^7 tokens/s/GPU; counts as in scenarios.
RANGES: dict[str, tuple[float, float, bool]] = {
    "decode_seqs": (0, 1_000_000, True), "context_tokens": (0, MAX_TOKENS, True),
    "prefill_tokens": (0, MAX_TOKENS, True), "step_time_s": (1e-7, 1e3, False),
    "input_tokens": (1, MAX_TOKENS, True), "output_tokens": (1, MAX_TOKENS, True),
    "requests": (1, 1_000_000, True), "output_tok_per_s_per_gpu": (1e-3, 1e7, False),
    "tp": (1, 1024, True), "max_num_seqs": (1, 1_000_000, True), "max_num_batched_tokens": (1, 100_000_000, True),
}


def _num(p: Path, line: int, col: str, raw: str, lo: float, hi: float, integer: bool) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise InputError(f"{p}: line {line}: column {col!r} must be a number, got {raw!r}") from None
    what = "an integer" if integer else "a number"
    if not math.isfinite(v) or not lo <= v <= hi or (integer and v != int(v)):
        raise InputError(f"{p}: line {line}: column {col!r} must be {what} from {lo:g} to {hi:g}, got {raw!r}")
    return v


def reference_points() -> tuple[list[Measurement], list[dict[str, Any]], dict[str, Any]]:
    """The bundled measured points (sim/data/measured_points.yaml): usable, skipped, header (the
    header keeps the scenario checks under `scenario_checks`)."""
    data = load_yaml(resources.files("sim").joinpath("data", "measured_points.yaml").read_text(encoding="utf-8"))
    ms = [_reference_point(pt, data) for pt in data["points"]]
    header = {k: v for k, v in data.items() if k not in ("points", "skipped")}
    return ms, data.get("skipped") or [], header


def _reference_point(pt: dict[str, Any], data: dict[str, Any]) -> Measurement:
    """One bundled point; a throughput point's lengths, request count and token budget default to
    the file's header."""
    config = {c: pt[c] for c in CONFIG_COLS}
    if pt.get("attention"):
        config["attention"] = pt["attention"]
    config.update({c: int(pt[c]) for c in LAYOUT_COLS if c in pt})
    engine = pt.get("engine", data.get("engine"))
    if pt.get("kind", "throughput") == "step":
        return Measurement(pt["id"], "step", config, float(pt["measured"]), decode_seqs=int(pt["decode_seqs"]),
                           context_tokens=int(pt["context_tokens"]), prefill_tokens=int(pt.get("prefill_tokens", 0)),
                           engine=engine)
    inp, out = int(pt.get("input_tokens", data["input_tokens"])), int(pt.get("output_tokens", data["output_tokens"]))
    seqs, budget = trtllm_bench_limits(config, inp, out, pt.get("checkpoint"))
    return Measurement(pt["id"], "throughput", config, float(pt["measured"]), input_tokens=inp, output_tokens=out,
                       requests=int(pt.get("requests", data["requests"])), max_num_seqs=seqs,
                       max_num_batched_tokens=budget, engine=engine,
                       chunked_prefill=pt.get("chunked_prefill", data.get("chunked_prefill")))


#: Checkpoint formats trtllm-bench sizes its limits for (tensorrt_llm/bench/build/build.py,
#: TUNED_QUANTS); the default format of each weight precision.
TUNED_CHECKPOINTS = ("nvfp4", "fp8", "fp8_block_scales", "none")
DEFAULT_CHECKPOINT = {"fp4": "nvfp4", "fp8": "fp8", "bf16": "none", "fp16": "none"}
#: TensorRT-LLM's own defaults, which trtllm-bench keeps for other formats (MXFP4, for example).
TRTLLM_DEFAULT_LIMITS = (2048, 8192)
#: Bytes per element as trtllm-bench counts them (its BYTES_PER_ELEM: NVFP4 0.5, scales not counted).
BENCH_BYTES = {"fp4": 0.5, "fp8": 1.0, "bf16": 2.0, "fp16": 2.0}


def trtllm_bench_limits(config: dict[str, Any], input_tokens: int, output_tokens: int, checkpoint: str | None = None,
                        kv_fraction: float = 0.95) -> tuple[int, int]:
    """(max batch size, max tokens per iteration) that trtllm-bench picks for a model, GPU, tp and
    benchmark lengths when none are given (TensorRT-LLM tensorrt_llm/bench/build/tuning.py,
    calc_engine_setting and finetune_setting): the requests whose whole sequence fits the KV memory
    left after the weights (KV bytes per token counted over every layer and at least one KV head per
    GPU, with the head size of the HF config or hidden / heads when it has none), capped at 4,096
    and rounded up; the token budget that many requests need to admit their
    prompts at the benchmark's input/output ratio, capped at 32,768 and at least 2,048, rounded up.
    Memory is the catalog's HBM in GiB, as the tool counts it; bytes per element as the tool counts
    them (`BENCH_BYTES`), times the elements the checkpoint stores (`_bench_param_count`). With attention data parallelism the tool is run with --tp = every GPU
    (tp x dp_attention) and each attention rank applies the limits to its own batch (the engine's
    max_batch_size and max_num_tokens are per rank), as the scenario's batching limits are. A
    checkpoint format the tool does not tune for (`checkpoint`, default from the weight precision)
    keeps TensorRT-LLM's defaults, 2,048 sequences and 8,192 tokens."""
    from sim.catalog import gpu_catalog, model_catalog

    if (checkpoint or DEFAULT_CHECKPOINT.get(config["weights"], "none")) not in TUNED_CHECKPOINTS:
        return TRTLLM_DEFAULT_LIMITS

    model, gpu = model_catalog()[config["model"]], gpu_catalog()[config["gpu"]]
    # The tool's --tp counts every GPU of the layout: "DEP4" is --tp 4 --ep 4 with attention DP.
    tp = int(config["tp"]) * int(config.get("dp_attention", 1))
    gib = 1024.0 ** 3
    weights_gib = _bench_param_count(model, checkpoint or DEFAULT_CHECKPOINT.get(config["weights"], "none")) \
        * BENCH_BYTES[config["weights"]] / gib
    # The tool reads head_dim from the HF config, else hidden / heads: DeepSeek's (MLA) config has
    # none, so it counts 7168 / 128 = 56 per head, not MLA's latent.
    head_size = model.hidden // model.q_heads if model.attention.kind == "mla" else model.head_dim
    kv_gib_per_token = 2 * model.layers * max(tp, model.kv_heads) * head_size * BENCH_BYTES[config["kv_cache"]] / gib
    free_gib = (gpu.hbm_gb * 1e9 / gib) * tp - weights_gib
    requests = max(1.0, free_gib * kv_fraction / (kv_gib_per_token * (input_tokens + output_tokens)))
    raw_bs = min(requests, 4096.0)
    raw_tokens = min(raw_bs * (1.0 + input_tokens / output_tokens), 32768.0)
    max_bs = _round_up_tiered(raw_bs, ((256, 32), (1024, 128), (math.inf, 256)), floor=64)
    max_tokens = _round_up_tiered(raw_tokens, ((4096, 256), (8192, 512), (math.inf, 1024)), floor=2048)
    return max_bs, max(max_tokens, max_bs)


def _bench_param_count(model: Any, checkpoint: str) -> float:
    """The parameter count trtllm-bench reads from the checkpoint's safetensors headers (elements
    stored). An NVFP4 checkpoint (ModelOpt) stores its quantized linear layers as two values per
    byte plus one FP8 scale per 16 values, so it reports 1/2 + 1/16 of their parameters; the
    embedding and the LM head stay 16-bit, one element each."""
    if checkpoint != "nvfp4":
        return float(model.params_total)
    unquantized = 2.0 * model.lm_head_params          # the embedding table and the LM head
    return (model.params_total - unquantized) * (0.5 + 1.0 / 16.0) + unquantized


def _round_up_tiered(x: float, tiers: tuple[tuple[float, int], ...], floor: int) -> int:
    """x rounded up to the multiple of the first tier whose bound exceeds it, at least `floor`
    (trtllm-bench's finetune_setting: coarser steps for larger values)."""
    step = next(multiple for bound, multiple in tiers if x < bound)
    return max(floor, step * math.ceil(x / step))


def profile(f: Fit, source: str) -> dict[str, Any]:
    """A perf profile (YAML-ready) that scenarios can reference with perf: {profile: FILE}."""
    return {
        "kind": "perf-profile",
        "source": source,
        "perf": {k: float(v) for k, v in f.base.items() if k in BOUNDS},
        "fitted": sorted(f.params),
        "rms_log_error": f.rms_log_error,
        "points": [{k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in r.items()}
                   for r in f.table.to_dict(orient="records")],
        "notes": f.notes,
    }
