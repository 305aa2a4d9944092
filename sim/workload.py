"""Workload: request arrivals, prompt/output lengths, and trace readers.

* Random streams: one root seed split into named, independent streams with
  ``np.random.SeedSequence(seed, spawn_key=(crc32(name),))``, so adding a stream never shifts
  another and every component draws from its own generator (design brief, "Randomness").
* Open-loop arrivals up to ``duration_s``: offline (all requests at t = 0); Poisson (exponential gaps); Gamma renewal with a
  coefficient of variation (shape 1/cv^2, so cv > 1 is burstier than Poisson); piecewise-constant
  Poisson rate; diurnal sinusoidal rate by thinning (Lewis & Shedler).
* Lengths: fixed; uniform integers; lognormal from mean m and cv (sigma^2 = ln(1 + cv^2),
  mu = ln m - sigma^2 / 2), rounded to the nearest integer and floored at 1 token; empirical
  resampling of a CSV column.
* Traces: Azure LLM inference CSV (2023 and 2024 share the columns TIMESTAMP, ContextTokens,
  GeneratedTokens) and Mooncake JSONL (timestamp in ms, input_length, output_length, hash_ids).
  ``rate_scale`` divides inter-arrival times (2.0 replays twice as fast); ``start_s`` skips the
  head of the trace. Coarse timestamps (Mooncake's conversation trace has ticks of about 3 s) are
  spread: the requests of one tick arrive at uniform random instants within it (``spread_s``).
* Prefix hash chains (for prefix caching, sim/engine/kv_tiers.py): a request's KV is a chain of
  chunks, each named by an integer that stands for the chunk and everything before it. Mooncake
  traces give them (``hash_ids``, 512-token blocks; the last, partial block is dropped). Otherwise
  a request's chunks are its own, except a shared prefix (``workload.shared_prefix``: one of P
  prefixes of T tokens, for a share of the requests) or, in multi-turn sessions, the system prompt
  and the session's earlier turns. Names are namespaced integers (``chunk_name``). A share of the
  requests (``workload.cache_salt_fraction``, drawn from the ``cache_salt`` stream in submission
  order) carry a cache salt, as vLLM's per-request ``cache_salt`` isolates tenants: their chunks
  are renamed after the request alone, so they reuse nothing and leave nothing for others.
* Sessions (``workload.sessions``): sessions start as a Poisson process; each draws its turn count,
  system prompt, user-message and answer lengths and think times up front (so two configurations
  see the same sessions); a turn's prompt is the system prompt, all earlier messages and answers,
  and its new message (traffic.py sends the turns).
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from sim.csvio import read_csv
from sim.errors import InputError, one_line
from sim.scenario import (
    MAX_TOKENS,
    ClosedLoop,
    Diurnal,
    EmpiricalLen,
    FixedLen,
    GammaArrivals,
    LengthDist,
    LognormalLen,
    Offline,
    Piecewise,
    Poisson,
    Scenario,
    SharedPrefix,
    Trace,
    UniformLen,
)

STREAMS = ("arrivals", "input_tokens", "output_tokens", "think_time", "routing", "prefixes", "sessions",
           "trace_spread", "cache_salt")


def rng_streams(seed: int) -> dict[str, np.random.Generator]:
    """Named independent generators derived from one root seed."""
    return {
        name: np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),))))
        for name in STREAMS
    }


@dataclass(frozen=True)
class OpenLoopRequests:
    """Pre-drawn open-loop requests, sorted by arrival time."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    #: Per request, the prompt's KV block hashes (Mooncake traces), else None.
    hash_ids: list[tuple[int, ...] | None] | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)


# ---- arrival processes --------------------------------------------------------------------

def _renewal(rng: np.random.Generator, duration_s: float, mean_gap_s: float, draw) -> np.ndarray:
    """Cumulative sums of i.i.d. gaps until duration_s, drawn in vectorised chunks."""
    out: list[np.ndarray] = []
    t0 = 0.0
    chunk = max(64, int(duration_s / mean_gap_s * 1.1) + 16)
    while True:
        times = t0 + np.cumsum(draw(rng, chunk))
        if times[-1] >= duration_s:
            out.append(times[times < duration_s])
            break
        out.append(times)
        t0 = float(times[-1])
    return np.concatenate(out)


def poisson_arrivals(rng: np.random.Generator, rate_per_s: float, duration_s: float) -> np.ndarray:
    gap = 1.0 / rate_per_s
    return _renewal(rng, duration_s, gap, lambda r, n: r.exponential(gap, n))


def gamma_arrivals(rng: np.random.Generator, rate_per_s: float, cv: float, duration_s: float) -> np.ndarray:
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate_per_s * shape)
    return _renewal(rng, duration_s, 1.0 / rate_per_s, lambda r, n: r.gamma(shape, scale, n))


def piecewise_arrivals(rng: np.random.Generator, spec: Piecewise, duration_s: float) -> np.ndarray:
    out = []
    t = 0.0
    while t < duration_s:
        for seg in spec.segments:
            end = min(t + seg.duration_s, duration_s)
            if seg.rate_per_s > 0 and end > t:
                out.append(t + poisson_arrivals(rng, seg.rate_per_s, end - t))
            t = end
            if t >= duration_s:
                break
        if not spec.repeat:
            break
    return np.concatenate(out) if out else np.empty(0)


def diurnal_arrivals(rng: np.random.Generator, spec: Diurnal, duration_s: float) -> np.ndarray:
    peak = spec.mean_rate_per_s * (1.0 + spec.amplitude)
    cand = poisson_arrivals(rng, peak, duration_s)
    rate = spec.mean_rate_per_s * (1.0 + spec.amplitude * np.sin(2 * np.pi * (cand + spec.phase_s) / spec.period_s))
    keep = rng.random(len(cand)) * peak < rate
    return cand[keep]


def draw_arrivals(rng: np.random.Generator, spec, duration_s: float) -> np.ndarray:
    match spec:
        case Poisson():
            return poisson_arrivals(rng, spec.rate_per_s, duration_s)
        case GammaArrivals():
            return gamma_arrivals(rng, spec.rate_per_s, spec.cv, duration_s)
        case Piecewise():
            return piecewise_arrivals(rng, spec, duration_s)
        case Diurnal():
            return diurnal_arrivals(rng, spec, duration_s)
        case Offline():
            return np.zeros(spec.requests)
    raise TypeError(f"not an open-loop arrival process: {spec!r}")


# ---- lengths ------------------------------------------------------------------------------

class LengthSampler:
    """Draws token counts for one length distribution; `draw(n)` returns int64 >= 1."""

    def __init__(self, spec: LengthDist, rng: np.random.Generator, field: str) -> None:
        self.spec, self.rng = spec, rng
        self._values: np.ndarray | None = None
        if isinstance(spec, EmpiricalLen):
            self._values = read_length_column(spec.path, spec.column, field)

    def draw(self, n: int) -> np.ndarray:
        s, r = self.spec, self.rng
        match s:
            case FixedLen():
                return np.full(n, s.value, dtype=np.int64)
            case UniformLen():
                return r.integers(s.low, s.high + 1, n, dtype=np.int64)
            case LognormalLen():
                sigma2 = np.log1p(s.cv * s.cv)
                mu = np.log(s.mean) - sigma2 / 2.0
                # Clipped where float -> int64 stays exact; lengths above the context are rejected anyway.
                return np.clip(np.rint(r.lognormal(mu, np.sqrt(sigma2), n)), 1, 2.0 ** 53).astype(np.int64)
            case EmpiricalLen():
                assert self._values is not None
                return r.choice(self._values, n)
        raise TypeError(f"unknown length distribution {s!r}")


def read_length_column(path: str, column: str, field: str) -> np.ndarray:
    df = read_csv(path, f"CSV for {field}")
    if column not in df.columns:
        raise InputError(f"{field}.column: {column!r} is not a column of {path} (columns: {list(df.columns)})")
    vals = pd.to_numeric(df[column], errors="coerce")
    bad = _bad_count(vals, 1)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{path}: line {i + 2}: column {column!r} must be an integer from 1 to {MAX_TOKENS:,}, "
                         f"got {df[column].iloc[i]!r}")
    if len(vals) == 0:
        raise InputError(f"{path}: column {column!r} is empty")
    return vals.to_numpy(dtype=np.int64)


def _bad_count(vals: pd.Series, low: int) -> pd.Series:
    """Token counts that are missing, not finite, not integers, or outside [low, MAX_TOKENS]."""
    finite = np.isfinite(vals.to_numpy(dtype=float, na_value=np.nan))
    return pd.Series(~finite, index=vals.index) | (vals < low) | (vals > MAX_TOKENS) | (vals % 1 != 0)


# ---- traces -------------------------------------------------------------------------------

def read_azure_trace(path: str | Path) -> pd.DataFrame:
    """Azure LLM inference CSV -> DataFrame(arrival_s, input_tokens, output_tokens), t0 = 0."""
    df = read_csv(path, "Azure trace CSV")
    need = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InputError(f"{path}: Azure trace lacks column(s) {missing}; has {list(df.columns)}")
    # One format for the whole column, ISO 8601 as the Azure releases write it (2023: naive,
    # 2024: "+00:00"); naive times are read as UTC. Day/month orders that could be read two ways
    # are refused rather than guessed.
    ts = pd.to_datetime(df["TIMESTAMP"], errors="coerce", format="ISO8601", utc=True)
    _check_col(path, df["TIMESTAMP"], ts.isna(), "TIMESTAMP", "an ISO 8601 timestamp (2023-11-16 18:15:46.68)")
    inp = pd.to_numeric(df["ContextTokens"], errors="coerce")
    _check_col(path, df["ContextTokens"], _bad_count(inp, 1), "ContextTokens", f"an integer from 1 to {MAX_TOKENS:,}")
    out = pd.to_numeric(df["GeneratedTokens"], errors="coerce")
    _check_col(path, df["GeneratedTokens"], _bad_count(out, 0), "GeneratedTokens", f"an integer from 0 to {MAX_TOKENS:,}")
    t = (ts - ts.min()).dt.total_seconds().to_numpy()
    return _trace_frame(t, inp.to_numpy(), out.to_numpy())


#: Mooncake timestamps are milliseconds from the trace's start; 1e12 ms is about 30 years.
MAX_TRACE_MS = 10 ** 12


def read_mooncake_trace(path: str | Path) -> pd.DataFrame:
    """Mooncake JSONL -> DataFrame(arrival_s, input_tokens, output_tokens[, hash_ids]).

    The file is parsed in one go and checked column by column; only a file that fails the check is
    read again row by row, to name the first bad line and field."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read Mooncake trace: {one_line(err)}") from None
    linenos = [i for i, line in enumerate(lines, 1) if line.strip()]
    if not linenos:
        raise InputError(f"{path}: the trace holds no requests")
    columns = _mooncake_columns(lines, linenos)
    if columns is None:
        columns = _mooncake_rows(path, lines, linenos)
    t, inp, out, hashes = columns
    # hash_ids are carried to the requests for prefix reuse.
    return _trace_frame(t - t.min(), inp, out, hash_ids=hashes, line=np.asarray(linenos))


_MOONCAKE_FIELDS = (("timestamp", 0, MAX_TRACE_MS), ("input_length", 1, MAX_TOKENS), ("output_length", 0, MAX_TOKENS))
_Columns = tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, ...] | None]]


def _mooncake_columns(lines: list[str], linenos: list[int]) -> _Columns | None:
    """The trace's columns if every row is well formed (integers in range, hash_ids lists of
    integers or absent), else None."""
    try:    # line by line: a value spanning lines, or two on one line, is the row by row reading's to name
        rows = list(map(orjson.loads, [lines[i - 1] for i in linenos]))
    except orjson.JSONDecodeError:     # also integers beyond 64 bits: the row by row reading names the line
        return None
    if set(map(type, rows)) != {dict}:
        return None
    cols = []
    for key, lo, hi in _MOONCAKE_FIELDS:
        vals = [row.get(key) for row in rows]
        if not set(map(type, vals)) <= {int}:       # floats, bools, strings, missing: the row by row check
            return None
        try:
            col = np.array(vals, dtype=np.int64)
        except OverflowError:
            return None
        if ((col < lo) | (col > hi)).any():
            return None
        cols.append(col)
    raw = [row.get("hash_ids") for row in rows]
    if not set(map(type, raw)) <= {list, type(None)} \
            or not set(map(type, itertools.chain.from_iterable(h for h in raw if h is not None))) <= {int}:
        return None
    hashes = [None if h is None else tuple(h) for h in raw]
    return cols[0] / 1000.0, cols[1], cols[2], hashes


def _mooncake_rows(path: str | Path, lines: list[str], linenos: list[int]) -> _Columns:
    """The trace's columns read row by row, raising InputError at the first bad line."""
    t, inp, out, hashes = [], [], [], []
    for lineno in linenos:
        line = lines[lineno - 1]
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: line {lineno}: malformed JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}: line {lineno}: expected a JSON object, got {line.strip()[:60]!r}")
        for key, lo, hi in _MOONCAKE_FIELDS:
            v = row.get(key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi \
                    or v != int(v):
                raise InputError(f"{path}: line {lineno}: field {key!r} must be an integer from {lo} to {hi:,}, got {v!r}")
        t.append(row["timestamp"] / 1000.0)
        inp.append(int(row["input_length"]))
        out.append(int(row["output_length"]))
        hashes.append(_hash_ids(path, lineno, row.get("hash_ids")))
    return np.asarray(t), np.asarray(inp), np.asarray(out), hashes


def _hash_ids(path: str | Path, lineno: int, v: object) -> tuple[int, ...] | None:
    """A Mooncake row's `hash_ids`: the ids of its prompt's KV blocks (512 tokens each), or None."""
    if v is None:
        return None
    if not isinstance(v, list) or any(isinstance(h, bool) or not isinstance(h, int) for h in v):
        raise InputError(f"{path}: line {lineno}: field 'hash_ids' must be a list of integers, got {str(v)[:60]!r}")
    return tuple(v)


def _check_col(path, raw: pd.Series, bad: pd.Series, col: str, what: str) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{path}: line {i + 2}: column {col!r} must be {what}, got {raw.iloc[i]!r}")
    if len(raw) == 0:
        raise InputError(f"{path}: the trace holds no requests")


def _trace_frame(t: np.ndarray, inp: np.ndarray, out: np.ndarray,
                 hash_ids: list[tuple[int, ...] | None] | None = None, line: np.ndarray | None = None) -> pd.DataFrame:
    df = pd.DataFrame({"arrival_s": t.astype(float), "input_tokens": inp.astype(np.int64),
                       "output_tokens": out.astype(np.int64)})
    if hash_ids is not None:
        df["hash_ids"] = pd.Series(hash_ids, dtype=object)
    if line is not None:
        df["line"] = line
    return df.sort_values("arrival_s", kind="stable").reset_index(drop=True)


def read_trace(spec: Trace) -> pd.DataFrame:
    return read_azure_trace(spec.path) if spec.format == "azure" else read_mooncake_trace(spec.path)


def trace_spread_s(spec: Trace, arrival_s: np.ndarray) -> float:
    """The trace's timestamp resolution: as given, else for Mooncake the median gap between
    distinct timestamps, for Azure 0 (its timestamps are fine-grained)."""
    if spec.spread_s is not None:
        return spec.spread_s
    if spec.format != "mooncake":
        return 0.0
    distinct = np.unique(arrival_s)
    return float(np.median(np.diff(distinct))) if len(distinct) > 1 else 0.0


def spread_arrivals(t: np.ndarray, spread_s: float, rng: np.random.Generator) -> np.ndarray:
    """Each arrival moved to a uniform random instant in [t, t + spread_s), order by the result."""
    if spread_s <= 0 or len(t) == 0:
        return t
    return t + rng.random(len(t)) * spread_s


def check_hash_chains(path: str, hashes: list[tuple[int, ...] | None], lines: list[int] | None = None) -> None:
    """Every row has hash_ids, and the chains agree: a hash names a chunk and everything before it,
    so it always sits at the same position after the same hash. `lines`: each row's line in the
    file (for the messages). Checked on arrays; a trace that fails is checked again row by row
    to name the first contradiction."""
    if any(chain is None for chain in hashes) or not _chains_agree(hashes):   # type: ignore[arg-type]
        _check_hash_chains_by_row(path, hashes, lines)


def _chains_agree(hashes: list[tuple[int, ...]]) -> bool:
    """Whether each hash has one position and one hash before it over all chains (False also when
    a hash does not fit in 64 bits: the row-by-row check decides then)."""
    lens = np.fromiter(map(len, hashes), dtype=np.int64, count=len(hashes))
    total = int(lens.sum())
    if total == 0:
        return True
    try:
        flat = np.fromiter(itertools.chain.from_iterable(hashes), dtype=np.int64, count=total)
    except OverflowError:
        return False
    starts = np.repeat(np.cumsum(lens) - lens, lens)
    pos = np.arange(total) - starts
    before = np.empty_like(flat)
    before[0] = 0
    before[1:] = flat[:-1]
    before[pos == 0] = 0                    # the first chunk has none (its position says so)
    order = np.argsort(flat, kind="stable")
    h = flat[order]
    new_group = np.ones(total, dtype=bool)
    new_group[1:] = h[1:] != h[:-1]
    first = order[np.maximum.accumulate(np.where(new_group, np.arange(total), 0))]   # each hash's first sighting
    return bool((pos[order] == pos[first]).all() and (before[order] == before[first]).all())


def _check_hash_chains_by_row(path: str, hashes: list[tuple[int, ...] | None], lines: list[int] | None) -> None:
    where: dict[int, tuple[int, int | None, int]] = {}     # hash -> (position, hash before it, line)
    for row, chain in enumerate(hashes):
        line = lines[row] if lines is not None else row + 1
        if chain is None:
            raise InputError(f"{path}: line {line} has no 'hash_ids'; prefix caching "
                             "(serving.kv_cache.prefix_caching) needs them on every line")
        before = None
        for k, h in enumerate(chain):
            seen = where.setdefault(h, (k, before, line))
            if seen[:2] != (k, before):
                then = "earlier on the same line" if seen[2] == line else f"on line {seen[2]}"
                raise InputError(f"{path}: line {line}: hash id {h} at position {k} after {before} was at position "
                                 f"{seen[0]} after {seen[1]} {then}; hash chains contradict each other")
            before = h


def trace_requests(spec: Trace, duration_s: float, chunk_tokens: int | None = None,
                   rng: np.random.Generator | None = None) -> OpenLoopRequests:
    """The trace's requests in [start_s, start_s + duration_s x rate_scale), spread within their
    timestamp ticks; with `chunk_tokens` (prefix caching) each carries its hash chain."""
    df = read_trace(spec)
    raw = df["arrival_s"].to_numpy()
    if rng is not None:
        raw = spread_arrivals(raw, trace_spread_s(spec, raw), rng)
    order = np.argsort(raw, kind="stable")
    t = (raw[order] - spec.start_s) / spec.rate_scale
    keep = (t >= 0) & (t < duration_s)
    # A request that asks for no output still gets its prompt processed and one token back
    # (serving engines sample at least once); count it as 1 output token.
    out = np.maximum(1, df["output_tokens"].to_numpy()[order][keep])
    inp = df["input_tokens"].to_numpy()[order][keep]
    hashes: list[tuple[int, ...] | None] | None = None
    if chunk_tokens is not None:
        if "hash_ids" not in df:
            hashes = [None] * int(keep.sum())
        else:
            all_hashes = df["hash_ids"].tolist()
            check_hash_chains(spec.path, all_hashes, df["line"].tolist() if "line" in df else None)
            kept = [all_hashes[i] for i in order[keep]]
            hashes = [None if c is None else c[:n // chunk_tokens] for c, n in zip(kept, inp.tolist(), strict=True)]
    elif "hash_ids" in df:
        all_hashes = df["hash_ids"].tolist()
        hashes = [all_hashes[i] for i in order[keep].tolist()]
    return OpenLoopRequests(t[keep], inp, out, hashes)


# ---- the scenario's workload ------------------------------------------------------------------

def open_loop_requests(sc: Scenario, streams: dict[str, np.random.Generator]) -> OpenLoopRequests:
    """All requests of an open-loop scenario (synthetic or trace), drawn up front."""
    w = sc.workload
    kv = sc.serving.kv_cache
    ct = kv.prefix_chunk_tokens if kv.prefix_caching else None
    if w.trace is not None:
        reqs = trace_requests(w.trace, sc.duration_s, ct, streams["trace_spread"])
        if ct is not None and w.trace.format == "azure":
            reqs = OpenLoopRequests(reqs.arrival_s, reqs.input_tokens, reqs.output_tokens,
                                    prefix_chains(reqs.input_tokens, ct, w.shared_prefix, streams["prefixes"]))
        elif ct is not None and reqs.hash_ids is not None and any(c is None for c in reqs.hash_ids):
            raise InputError(f"{w.trace.path}: the trace has no 'hash_ids'; prefix caching "
                             "(serving.kv_cache.prefix_caching) needs them on every line")
        return reqs
    assert w.arrivals is not None and w.input_tokens is not None and w.output_tokens is not None
    t = draw_arrivals(streams["arrivals"], w.arrivals, sc.duration_s)
    n = len(t)
    inp = LengthSampler(w.input_tokens, streams["input_tokens"], "workload.input_tokens").draw(n)
    out = LengthSampler(w.output_tokens, streams["output_tokens"], "workload.output_tokens").draw(n)
    chains = prefix_chains(inp, ct, w.shared_prefix, streams["prefixes"]) if ct is not None else None
    return OpenLoopRequests(t, inp, out, chains)


# ---- prefix hash chains ---------------------------------------------------------------------------

#: Namespaces of generated chunk names (Mooncake's own ids are small non-negative integers).
OWN, SHARED, SYSTEM, SESSION, SALTED = 1, 2, 3, 4, 5
CHUNK_BITS = 24          # chunk positions below 2**24 (8.6 billion tokens at 512 per chunk)


def chunk_name(space: int, owner: int, position: int) -> int:
    """The integer naming chunk `position` of `owner` (a request, shared prefix, system prompt or
    session) in one namespace; never equal to another namespace's or a Mooncake id."""
    return (space << 58) | (owner << CHUNK_BITS) | position


def prefix_chains(inp: np.ndarray, chunk_tokens: int, shared: SharedPrefix | None,
                  rng: np.random.Generator, first_owner: int = 0) -> list[tuple[int, ...] | None]:
    """Each prompt's full chunks: a shared prefix's (when the model gives it one), then its own,
    named after the request (prompt i is request first_owner + i)."""
    n = len(inp)
    full = (inp // chunk_tokens).tolist()
    if shared is not None:
        picks = rng.integers(0, shared.prefixes, n).tolist()
        uses = (rng.random(n) < shared.fraction).tolist()
        shared_chunks = shared.tokens // chunk_tokens
    chains: list[tuple[int, ...] | None] = []
    for i in range(n):
        k_shared = min(shared_chunks, full[i]) if shared is not None and uses[i] else 0
        head = [chunk_name(SHARED, picks[i], k) for k in range(k_shared)] if k_shared else []
        chains.append(tuple(head + [chunk_name(OWN, first_owner + i, k) for k in range(k_shared, full[i])]))
    return chains


def salted_chain(rid: int, chunks: int) -> tuple[int, ...]:
    """A salted request's chunks: named after the request alone, so they match no other request's
    (workload.cache_salt_fraction)."""
    return tuple(chunk_name(SALTED, rid, k) for k in range(chunks))


# ---- multi-turn sessions ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionPlan:
    """One session, drawn up front: when it starts, its system prompt, and per turn the new user
    message's tokens, the answer's tokens and the think time after it."""

    sid: int
    start_s: float
    system_prompt: int
    user_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    think_s: tuple[float, ...]


def session_plans(sc: Scenario, streams: dict[str, np.random.Generator]) -> list[SessionPlan]:
    spec = sc.workload.sessions
    assert spec is not None
    starts = poisson_arrivals(streams["arrivals"], spec.rate_per_s, sc.duration_s)
    n = len(starts)
    turns = LengthSampler(spec.turns, streams["sessions"], "workload.sessions.turns").draw(n)
    prompts = streams["sessions"].integers(0, spec.system_prompts, n)
    total = int(turns.sum())
    users = LengthSampler(spec.user_tokens, streams["input_tokens"], "workload.sessions.user_tokens").draw(total)
    outs = LengthSampler(spec.output_tokens, streams["output_tokens"], "workload.sessions.output_tokens").draw(total)
    thinks = streams["think_time"].exponential(spec.think_time_s, total) if spec.think_time_s > 0 else np.zeros(total)
    plans, j = [], 0
    for i in range(n):
        k = int(turns[i])
        plans.append(SessionPlan(i, float(starts[i]), int(prompts[i]), tuple(users[j:j + k].tolist()),
                                 tuple(outs[j:j + k].tolist()), tuple(thinks[j:j + k].tolist())))
        j += k
    return plans


def session_chain(plan: SessionPlan, system_tokens: int, kv_tokens: int, chunk_tokens: int) -> tuple[int, ...]:
    """The chunks of a session's first kv_tokens tokens: the system prompt's own (shared by every
    session with that prompt) while a chunk lies inside it, the session's after."""
    sys_full = system_tokens // chunk_tokens
    return tuple(chunk_name(SYSTEM, plan.system_prompt, k) if k < sys_full else chunk_name(SESSION, plan.sid, k)
                 for k in range(kv_tokens // chunk_tokens))


class ClosedLoopLengths:
    """Lengths for closed-loop clients: from the distributions, or cycling through a trace."""

    def __init__(self, sc: Scenario, streams: dict[str, np.random.Generator]) -> None:
        w = sc.workload
        kv = sc.serving.kv_cache
        self._i = 0
        self._hashes: list[tuple[int, ...] | None] | None = None
        #: With prefix caching: the chunk size, and what names each drawn request's own chunks.
        self._chunk = kv.prefix_chunk_tokens if kv.prefix_caching else None
        self._shared, self._prefix_rng, self._drawn = w.shared_prefix, streams["prefixes"], 0
        self._fresh_chains = False
        if w.trace is not None:
            df = read_trace(w.trace)
            self._inp = df["input_tokens"].to_numpy()
            self._out = np.maximum(1, df["output_tokens"].to_numpy())
            self._hashes = df["hash_ids"].tolist() if "hash_ids" in df else None
            if self._chunk is not None:
                if self._hashes is None:
                    if w.trace.format == "mooncake":
                        raise InputError(f"{w.trace.path}: the trace has no 'hash_ids'; prefix caching "
                                         "(serving.kv_cache.prefix_caching) needs them on every line")
                    # An Azure row sent again on the next lap is a new prompt of the same length:
                    # its chunks are drawn afresh each time (next()).
                    self._fresh_chains = True
                else:
                    check_hash_chains(w.trace.path, self._hashes, df["line"].tolist() if "line" in df else None)
                    self._hashes = [c[:n // self._chunk] if c is not None else None
                                    for c, n in zip(self._hashes, self._inp.tolist(), strict=True)]
            self._samplers = None
        else:
            assert w.input_tokens is not None and w.output_tokens is not None
            self._samplers = (
                LengthSampler(w.input_tokens, streams["input_tokens"], "workload.input_tokens"),
                LengthSampler(w.output_tokens, streams["output_tokens"], "workload.output_tokens"),
            )
            self._refill()

    def _refill(self) -> None:
        assert self._samplers is not None
        self._inp = self._samplers[0].draw(4096)
        self._out = self._samplers[1].draw(4096)
        self._i = 0
        if self._chunk is not None:
            # the chunks of request j of this batch are named by its number among all drawn
            self._hashes = prefix_chains(self._inp, self._chunk, self._shared, self._prefix_rng, self._drawn)
            self._drawn += len(self._inp)

    def next(self) -> tuple[int, int, tuple[int, ...] | None]:
        """(input tokens, output tokens, prompt block hashes or None) of the next request."""
        if self._i >= len(self._inp):
            if self._samplers is None:
                self._i = 0
            else:
                self._refill()
        i = self._i
        self._i += 1
        if self._fresh_chains:
            assert self._chunk is not None
            chain = prefix_chains(self._inp[i:i + 1], self._chunk, self._shared, self._prefix_rng, self._drawn)[0]
            self._drawn += 1
            return int(self._inp[i]), int(self._out[i]), chain
        return int(self._inp[i]), int(self._out[i]), None if self._hashes is None else self._hashes[i]


def think_time_s(spec: ClosedLoop, rng: np.random.Generator) -> float:
    if spec.think_time_s == 0:
        return 0.0
    if spec.think_time_dist == "exponential":
        return float(rng.exponential(spec.think_time_s))
    return spec.think_time_s
