"""Speculative decoding and multi-token prediction: what a scenario's `speculative:` block means.

A drafter proposes k tokens per decoding sequence; the target model verifies them in one forward
pass over k + 1 query tokens per sequence and keeps the longest accepted prefix plus one token of
its own (the "bonus" token). A verification step therefore yields 1 + a tokens, a in 0..k.

Acceptance (three published forms, all reduced to the survival function S_i = P(a >= i)):

* `rate` alpha: each draft is accepted with probability alpha given the ones before it were, so
  S_i = alpha^i and E[tokens/step] = 1 + sum S_i = (1 - alpha^(k+1)) / (1 - alpha) (the standard
  result; facts.md section 4);
* `per_position` a_1..a_k: draft i is accepted with probability a_i given 1..i-1 were, so
  S_i = a_1 x ... x a_i;
* `mean_accepted_length` {k: tau(k)}: the mean tokens per verification step that benchmarks
  publish for each k (EAGLE's "acceptance length", bonus token included). With tau(0) = 1,
  S_i = tau(i) - tau(i - 1) when the table has every k' <= k; otherwise S_i = alpha^i with the
  alpha that gives tau(k) through the formula above.

Per-request variation (`per_request_concentration` c): each request draws u ~ Beta(c m, c (1 - m)),
m the mean of the per-draft acceptances a_i = S_i / S_(i-1), and accepts every draft with
min(1, lambda a_i u / m), so some requests (code) accept more at every position than others
(chat). lambda, found once by bisection over the Beta distribution's quantiles, keeps the mean
accepted length that a run reports, total tokens over total verification steps, at the scenario's
E[tokens per step]: since a request that accepts less takes more steps for the same output, that
is the harmonic mean over requests of their own E[tokens per step] (without lambda, the spread
would move it by several percent, down for wide spreads).

Sampling: a request's accepted lengths come from draws addressed by its id in a counter-based
generator (numpy's Philox, keyed by the root seed): its first BLOCK_STEPS steps from its row of a
block drawn for BLOCK_REQUESTS consecutive ids at once (counter (0, 0, id // BLOCK_REQUESTS, 1)),
any further ones from its own stream (counter (0, 0, id, 0)); with a per-request spread, all from
its own stream. One uniform 32-bit draw U per verification step, and a = #{i : U < S_i 2^32}.
They are drawn once, when the request first decodes, for its whole output, so its finishing step
and its KV growth are known in advance (the engine's decode runs stay one event each) and they do
not depend on when it is scheduled. Arrivals and lengths come from other
streams, so runs with and without speculation see the same requests (common random numbers): the
same arrivals and lengths for open-loop traffic and traces; closed-loop clients draw the same
lengths but send their next request sooner when answers come faster.

Drafters and their cost (sim/perf prices them as `DraftWork`, k sequential passes per step):

* `draft_model`: a separate catalog model on the same GPUs (same tensor parallelism), one decode
  step of it per draft token; its weights and its KV per token take memory beside the target's;
* `eagle`: one decoder layer of the target's shape plus the LM head per draft token (EAGLE-1/2/3);
* `medusa`: k heads, each a residual block (hidden x hidden) plus an LM head, all reading the
  target's last hidden state; priced as k passes of hidden^2 / (one layer's weights) of a layer;
* `mtp`: DeepSeek's multi-token-prediction modules, each one transformer layer of the target;
  with k above the modules shipped, the last module is reused (as SGLang and vLLM do).

The k draft tokens take KV slots in the target's cache while they are verified (vLLM's lookahead
slots): a decoding sequence holds the blocks of its KV + k + 1 tokens during a step.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from sim.catalog import BYTES_PER_ELEMENT, ModelSpec, model_catalog
from sim.input_model import InputModel
from sim.perf.shape import DraftWork

MAX_DRAFT_TOKENS = 32
Method = Literal["draft_model", "eagle", "medusa", "mtp"]


class Acceptance(InputModel):
    """One of three forms of the drafts' acceptance (see the module docstring)."""

    rate: float | None = Field(default=None, description="per-token acceptance probability, in [0, 1]")
    per_position: list[float] | None = Field(
        default=None, description="a_1..a_k: acceptance of draft i given drafts 1..i-1 were accepted")
    mean_accepted_length: dict[int, float] | None = Field(
        default=None, description="measured mean tokens per verification step (bonus token included) by k")

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_or_clashing_keys(cls, data: object) -> object:
        # A YAML `true` would read as 1 inside the list or as key 1 in the table, and keys 2 and
        # "2" would silently collapse into one: refuse both, naming the entry.
        if not isinstance(data, dict):
            return data
        positions = data.get("per_position")
        if isinstance(positions, list):
            for i, v in enumerate(positions):
                if isinstance(v, bool):
                    raise ValueError(f"per_position[{i}]: expected a number, got {str(v).lower()}")
        table = data.get("mean_accepted_length")
        if isinstance(table, dict):
            seen: dict[int, object] = {}
            for key, v in table.items():
                if isinstance(key, bool) or isinstance(v, bool):
                    raise ValueError(f"mean_accepted_length: {key!r}: {v!r}: expected k: tau numbers, not true/false")
                try:
                    k = float(key)
                except (TypeError, ValueError):
                    raise ValueError(f"mean_accepted_length: key {key!r} is not a number of draft tokens") from None
                if not k.is_integer():
                    raise ValueError(f"mean_accepted_length: key {key!r} is not a whole number of draft tokens")
                if int(k) in seen:
                    raise ValueError(f"mean_accepted_length: k={int(k)} is given twice ({seen[int(k)]!r} and {v!r})")
                seen[int(k)] = v
        return data

    @model_validator(mode="after")
    def _one_form(self) -> Acceptance:
        given = [n for n in ("rate", "per_position", "mean_accepted_length") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of rate, per_position, mean_accepted_length"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate={self.rate} is outside [0, 1]")
        if self.per_position is not None:
            if not self.per_position:
                raise ValueError("per_position is empty")
            for i, a in enumerate(self.per_position, 1):
                if not 0.0 <= a <= 1.0:
                    raise ValueError(f"per_position[{i - 1}]={a} (a_{i}) is outside [0, 1]")
        if self.mean_accepted_length is not None:
            _check_table(self.mean_accepted_length)
        return self


def _check_table(table: dict[int, float]) -> None:
    """Raise ValueError unless every tau(k) is in [1, k + 1] and tau never falls as k grows."""
    if not table:
        raise ValueError("mean_accepted_length is empty")
    prev_k, prev = 0, 1.0
    for k in sorted(table):
        tau = table[k]
        if k < 1:
            raise ValueError(f"mean_accepted_length has k={k}; k counts draft tokens, from 1")
        if not 1.0 <= tau <= k + 1:
            raise ValueError(f"mean_accepted_length[{k}]={tau} is outside [1, {k + 1}] (a step yields 1 to k + 1 tokens)")
        if tau < prev:
            raise ValueError(f"mean_accepted_length is not non-decreasing in k: {tau} at k={k} < {prev} at k={prev_k}")
        prev_k, prev = k, tau


class Speculative(InputModel):
    """The scenario's `speculative:` block."""

    method: Method
    k: int = Field(ge=1, le=MAX_DRAFT_TOKENS, description="draft tokens proposed per sequence per step")
    acceptance: Acceptance
    draft_model: ModelSpec | None = Field(default=None, description="catalog name or inline model (method draft_model)")
    allow_vocab_mismatch: bool = Field(
        default=False, description="let a draft model with another vocabulary propose (its tokens are mapped)")
    per_request_concentration: float | None = Field(
        default=None, gt=0, le=1e6, description="Beta concentration of each request's acceptance around the mean "
        "(smaller: more spread); none: every request accepts alike")

    @model_validator(mode="before")
    @classmethod
    def _resolve_draft(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("draft_model"), str):
            cat = model_catalog()
            name = data["draft_model"]
            if name not in cat:
                raise ValueError(f"draft_model: unknown model {name!r}; catalog has: {', '.join(cat)}")
            return {**data, "draft_model": cat[name]}
        return data

    @model_validator(mode="after")
    def _check(self) -> Speculative:
        if (self.method == "draft_model") != (self.draft_model is not None):
            raise ValueError("method draft_model needs a draft_model, and only it takes one"
                             if self.draft_model is None else f"draft_model is given but method is {self.method!r}")
        a = self.acceptance
        if a.per_position is not None and len(a.per_position) != self.k:
            raise ValueError(f"acceptance.per_position has {len(a.per_position)} values for k={self.k}")
        if a.mean_accepted_length is not None and self.k not in a.mean_accepted_length:
            raise ValueError(f"acceptance.mean_accepted_length has no entry for k={self.k} "
                             f"(it has k = {', '.join(str(x) for x in sorted(a.mean_accepted_length))})")
        survival(a, self.k)         # a table whose gains grow with k is refused here, with its numbers
        return self


def check_against_target(spec: Speculative, target: ModelSpec, tp: int) -> None:
    """Raise ValueError (naming the field) where the speculative block cannot run with this target."""
    if spec.method == "mtp" and target.mtp_modules < 1:
        raise ValueError(f"speculative.method='mtp': model {target.name!r} has no MTP modules (mtp_modules: 0 in the "
                         "catalog; DeepSeek-V3/R1 ship one)")
    d = spec.draft_model
    if d is None:
        return
    if d.params_active >= target.params_active:
        raise ValueError(f"speculative.draft_model={d.name!r} ({d.params_active / 1e9:.2f}B active parameters) is not "
                         f"smaller than the target {target.name!r} ({target.params_active / 1e9:.2f}B)")
    if d.max_context_tokens < target.max_context_tokens:
        raise ValueError(f"speculative.draft_model={d.name!r} handles {d.max_context_tokens:,} tokens of context, the "
                         f"target {target.name!r} {target.max_context_tokens:,}: it could not draft for long requests")
    if d.vocab != target.vocab and not spec.allow_vocab_mismatch:
        raise ValueError(f"speculative.draft_model={d.name!r} has a vocabulary of {d.vocab:,} tokens, the target "
                         f"{target.name!r} {target.vocab:,}; set speculative.allow_vocab_mismatch: true if its tokens "
                         "are mapped")
    if d.q_heads % tp or (d.kv_heads % tp and tp % d.kv_heads):
        raise ValueError(f"speculative.draft_model={d.name!r} ({d.q_heads} heads, {d.kv_heads} KV heads) cannot be "
                         f"split over serving.parallelism.tp={tp}")


# ---- acceptance -------------------------------------------------------------------------------

def rate_for_mean_length(tau: float, k: int) -> float:
    """The per-token rate alpha with (1 - alpha^(k+1)) / (1 - alpha) = tau (monotone in alpha:
    Brent's method between 0 and 1)."""
    from scipy.optimize import brentq

    if tau <= 1.0:
        return 0.0
    if tau >= k + 1:
        return 1.0
    return float(brentq(lambda a: mean_tokens_geometric(a, k) - tau, 0.0, 1.0, xtol=1e-15))


def mean_tokens_geometric(alpha: float, k: int) -> float:
    """E[tokens per step] = (1 - alpha^(k+1)) / (1 - alpha) = 1 + alpha + ... + alpha^k."""
    return float(sum(alpha ** i for i in range(k + 1)))


def survival(acc: Acceptance, k: int) -> np.ndarray:
    """S_i = P(at least i drafts accepted), i = 1..k (non-increasing, in [0, 1])."""
    if acc.rate is not None:
        return acc.rate ** np.arange(1, k + 1, dtype=float)
    if acc.per_position is not None:
        return np.cumprod(np.asarray(acc.per_position, dtype=float))
    table = acc.mean_accepted_length
    assert table is not None
    if all(i in table for i in range(1, k + 1)):
        taus = np.array([1.0] + [table[i] for i in range(1, k + 1)])
        s = np.diff(taus)
        if np.any(np.diff(s) > 1e-12):
            i = int(np.argmax(np.diff(s) > 1e-12)) + 2
            raise ValueError(f"acceptance.mean_accepted_length: the gain from k={i - 1} to k={i} "
                             f"({s[i - 1]:.3g}) exceeds the gain to k={i - 1} ({s[i - 2]:.3g}); no chain of drafts "
                             "accepts a later token more often than an earlier one")
        return s
    return rate_for_mean_length(table[k], k) ** np.arange(1, k + 1, dtype=float)


def expected_tokens_per_step(s: np.ndarray) -> float:
    """E[tokens per verification step] = 1 + sum_i S_i."""
    return 1.0 + float(s.sum())


#: 32-bit draws: a threshold of 2^32 accepts every draw, 0 none.
_U32 = 2**32


def _thresholds(s: np.ndarray) -> tuple[int, ...]:
    """round(S_i x 2^32), i = 1..k: a step's uniform 32-bit draw U accepts draft i when U < T_i, so
    P(at least i accepted) = S_i to within 2^-33, exactly for S_i = 0 or 1 (T non-increasing, so the
    accepted drafts are always a prefix)."""
    return tuple(int(round(float(x) * _U32)) for x in s)


def _tokens_per_step(u32: np.ndarray, thresholds: tuple[int, ...]) -> np.ndarray:
    """Tokens of each step, 1 + #{i : U < T_i}, for an array of 32-bit draws (any shape): one
    comparison pass per threshold strictly between 0 and 2^32, or one search when k is large."""
    always = sum(t >= _U32 for t in thresholds)
    partial = [t for t in thresholds if 0 < t < _U32]
    if len(partial) > 8:
        # T ascending: the drafts a draw accepts among the partial ones are those with U < T
        asc = np.array(sorted(partial), dtype=np.uint64)
        return 1 + always + len(partial) - asc.searchsorted(u32.astype(np.uint64), side="right").astype(np.int64)
    out = np.full(u32.shape, 1 + always, dtype=np.int64)
    for t in partial:
        out += u32 < np.uint32(t)
    return out


def _draws_u32(bits: np.random.Philox, n: int) -> np.ndarray:
    """n uniform 32-bit draws: each raw 64-bit Philox output split in two (little-endian halves)."""
    return bits.random_raw((n + 1) // 2).astype("<u8", copy=False).view("<u4")[:n]


#: Requests whose first steps are drawn together, the steps drawn for each, and the blocks kept.
BLOCK_REQUESTS = 64
BLOCK_STEPS = 256
KEPT_BLOCKS = 64


class AcceptanceSampler:
    """Each request's tokens per verification step, from its own counter-based stream."""

    def __init__(self, spec: Speculative, root_seed: int) -> None:
        self.k = spec.k
        self.s = survival(spec.acceptance, spec.k)
        self.mean_tokens = expected_tokens_per_step(self.s)
        self.concentration = spec.per_request_concentration
        # a_i = S_i / S_(i-1): each draft's acceptance given the ones before it were accepted
        previous = np.concatenate([[1.0], self.s[:-1]])
        self._per_draft = np.divide(self.s, previous, out=np.zeros_like(self.s), where=previous > 0)
        m = float(self._per_draft.mean())
        self._scale = self._spread_scale() if self.concentration is not None and 0.0 < m < 1.0 else 1.0
        key = np.random.SeedSequence([root_seed, 0x5EC]).generate_state(2, np.uint64)
        self._bitgen = np.random.Philox(key=key)
        self._gen = np.random.Generator(self._bitgen)
        self._state: Any = {"bit_generator": "Philox",
                       "state": {"counter": np.zeros(4, dtype=np.uint64), "key": key},
                       "buffer": np.zeros(4, dtype=np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
        self._counter = self._state["state"]["counter"]
        # S_1 >= ... >= S_k as thresholds on 32-bit draws (U < T_i: draft i accepted)
        self._thresholds = _thresholds(self.s)
        # Steps drawn at first: enough for the tokens asked in all but a few cases (then more).
        self._steps_per_token = 1.1 / self.mean_tokens
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()

    def _stream(self, request_id: int) -> np.random.Philox:
        # The request's own stream: Philox's counter starts at (0, 0, id, 0), 2^128 draws from any other.
        self._counter[2] = request_id
        self._bitgen.state = self._state
        return self._bitgen

    def _spread_scale(self) -> float:
        """lambda such that the harmonic mean over requests of E[tokens per step] (total tokens
        over total steps) is the scenario's."""
        from scipy.stats import beta

        m, c = float(self._per_draft.mean()), float(self.concentration or 0.0)
        u = beta.ppf((np.arange(2000) + 0.5) / 2000, c * m, c * (1.0 - m)) / m

        def mean_tokens(lam: float) -> float:
            per_draft = np.minimum(1.0, lam * self._per_draft[None, :] * u[:, None])
            return float(1.0 / (1.0 / (1.0 + np.cumprod(per_draft, axis=1).sum(axis=1))).mean())

        lo, hi = 0.0, 1.0
        while mean_tokens(hi) < self.mean_tokens and hi < 1e6:
            lo, hi = hi, 2.0 * hi
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mean_tokens(mid) < self.mean_tokens else (lo, mid)
        return (lo + hi) / 2

    def request_survival(self, request_id: int) -> np.ndarray:
        """This request's S: the scenario's, or with every per-draft acceptance scaled by its own
        Beta draw (module docstring)."""
        self._stream(request_id)       # the request's stream, whichever way (its steps' draws follow)
        if self.concentration is None:
            return self.s
        per_draft = self._per_draft
        m = float(per_draft.mean())
        if m <= 0.0 or m >= 1.0:
            return self.s
        c = self.concentration
        u = self._gen.beta(c * m, c * (1.0 - m))
        return np.cumprod(np.minimum(1.0, per_draft * (self._scale * u / m)))

    def _block(self, block: int) -> np.ndarray:
        """Cumulative tokens of the first BLOCK_STEPS steps of requests block x BLOCK_REQUESTS ..
        + BLOCK_REQUESTS - 1, one row each (drawn together from the block's stream, Philox counter
        (0, 0, block, 1); a few recent blocks are kept, any other is drawn again identically)."""
        rows = self._blocks.get(block)
        if rows is None:
            self._counter[2], self._counter[3] = block, 1
            self._bitgen.state = self._state
            self._counter[3] = 0
            u32 = _draws_u32(self._bitgen, BLOCK_REQUESTS * BLOCK_STEPS).reshape(BLOCK_REQUESTS, BLOCK_STEPS)
            rows = np.empty((BLOCK_REQUESTS, BLOCK_STEPS + 1), dtype=np.int64)
            rows[:, 0] = 0
            np.cumsum(_tokens_per_step(u32, self._thresholds), axis=1, out=rows[:, 1:])
            self._blocks[block] = rows
            if len(self._blocks) > KEPT_BLOCKS:
                self._blocks.popitem(last=False)
        return rows

    def cumulative_tokens(self, request_id: int, tokens: int) -> np.ndarray:
        """cum[j] = tokens the request's first j verification steps yield (cum[0] = 0), for at least
        `tokens` tokens (int64, strictly increasing). Without a per-request spread, a request's first
        BLOCK_STEPS steps come from its row of a block drawn for BLOCK_REQUESTS requests at once, and
        any further steps from its own stream (Philox counter (0, 0, id, 0)); with a spread, all of
        them from its own stream, after its Beta draw."""
        if self.concentration is None:
            row = self._block(request_id // BLOCK_REQUESTS)[request_id % BLOCK_REQUESTS]
            if row[-1] >= tokens:
                return row
            return self._extend(row, tokens, self._thresholds, self._stream(request_id))
        thresholds = _thresholds(self.request_survival(request_id))
        # the request's stream, past its Beta draw
        return self._extend(np.zeros(1, dtype=np.int64), tokens, thresholds, self._bitgen)

    def _extend(self, cum: np.ndarray, tokens: int, thresholds: tuple[int, ...], bits: np.random.Philox) -> np.ndarray:
        """`cum` continued with steps drawn from `bits` until it reaches `tokens`: one uniform draw U
        per step, a = #{i : U < S_i} drafts accepted, a + 1 tokens."""
        while cum[-1] < tokens:
            steps = int((tokens - cum[-1]) * self._steps_per_token) + 8
            more = _tokens_per_step(_draws_u32(bits, steps), thresholds).cumsum()
            more += cum[-1]
            cum = np.concatenate([cum, more])
        return cum


# ---- drafters ----------------------------------------------------------------------------------

def layer_params(m: ModelSpec) -> float:
    """Weights of one average transformer layer (routed experts included), excluding embedding and head."""
    return (m.params_total - m.lm_head_params - (0 if m.tied_embeddings else m.vocab * m.hidden)) / m.layers


def draft_work(spec: Speculative, target: ModelSpec) -> DraftWork:
    """The draft passes of one verification step (layer_share 1: the draft model's own step)."""
    if spec.method == "draft_model":
        return DraftWork(spec.k, 1.0)
    if spec.method == "medusa":
        # A Medusa head's residual block (hidden x hidden) against one layer's weights; its LM head
        # is the per-pass LM head every draft pass reads.
        return DraftWork(spec.k, min(1.0, target.hidden * target.hidden / layer_params(target)) / target.layers)
    return DraftWork(spec.k, 1.0 / target.layers)     # eagle, mtp: one layer of the target per draft


def drafter_memory(spec: Speculative, target: ModelSpec, *, weights: str, kv_cache: str, tp: int) -> tuple[float, float]:
    """(drafter weight bytes per GPU, drafter KV bytes per token per GPU) beside the target's."""
    wb = BYTES_PER_ELEMENT[weights]
    if spec.method == "draft_model":
        d = spec.draft_model
        assert d is not None
        return d.params_total * wb / tp, d.kv_bytes_per_token(kv_cache, tp)
    per_layer_kv = target.kv_bytes_per_token_per_layer(kv_cache, tp)
    if spec.method == "medusa":
        # k heads, each a hidden x hidden block and its own LM head (Medusa-1); no KV.
        return spec.k * (target.hidden * target.hidden + target.lm_head_params) * wb / tp, 0.0
    if spec.method == "mtp":
        modules = target.mtp_modules
        # Each module: one layer plus the eh_proj (2 hidden x hidden); embedding and head are shared.
        return modules * (layer_params(target) + 2 * target.hidden * target.hidden) * wb / tp, modules * per_layer_kv
    # eagle: one decoder layer and the fusing projection (3 hidden x hidden in EAGLE-3); shared head.
    return (layer_params(target) + 3 * target.hidden * target.hidden) * wb / tp, per_layer_kv


@dataclass(frozen=True)
class Speculation:
    """What a replica needs to decode speculatively: k, the draft work of a step, and the sampler
    of accepted lengths (one per simulation, keyed by its root seed)."""

    k: int
    draft: DraftWork
    sampler: AcceptanceSampler


def speculation_for(spec: Speculative, target: ModelSpec, root_seed: int) -> Speculation:
    """The replicas' view of a scenario's speculative block, for one simulation's root seed."""
    return Speculation(spec.k, draft_work(spec, target), AcceptanceSampler(spec, root_seed))


def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return float("nan")
    return a / b


#: The figures of the run without speculation that `comparison` keeps (as no_spec_<name>).
COMPARED = ("tpot_s_mean", "tpot_s_p99", "ttft_s_p99", "output_tok_per_s_per_user_p50", "output_tok_per_s_per_gpu",
            "usd_per_m_output_tokens", "gpu_busy_fraction")


def comparison(with_spec: dict[str, Any], without: dict[str, Any]) -> dict[str, Any]:
    """The effective speedup of a run with speculation over the same run (same seed, so the same
    arrivals and lengths) without it: mean TPOT (what a user sees), output tokens/s per GPU (what a
    saturated deployment serves) and $/M output tokens, with the figures compared."""
    return {
        "spec_speedup_tpot": _ratio(without.get("tpot_s_mean"), with_spec.get("tpot_s_mean")),
        "spec_speedup_tok_per_s_per_gpu": _ratio(with_spec.get("output_tok_per_s_per_gpu"),
                                                 without.get("output_tok_per_s_per_gpu")),
        "spec_cost_ratio": _ratio(with_spec.get("usd_per_m_output_tokens"), without.get("usd_per_m_output_tokens")),
        **{f"no_spec_{k}": without.get(k) for k in COMPARED},
    }
