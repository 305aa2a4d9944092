"""Traffic: the SimPy processes that create requests and hand them to the cluster's router.

* Open loop: requests arrive at pre-drawn times (workload.py), one SimPy timeout per arrival,
  whatever the system's state.
* Closed loop: each client sends a request, waits for its last token (or its rejection), thinks,
  and sends the next, until the scenario's duration ends, as benchmark tools do. A rejected client
  backs off before retrying, as HTTP clients do on a 429/503: 10 ms after the first rejection in a
  row, doubling up to 1 s (or its think time, if longer). Without the back-off, 1,000 clients on a
  queue of 10 would retry a million times per simulated second.
* Sessions: each multi-turn session (workload.session_plans) starts at its time and sends its
  turns one after another: a turn a think time after the previous answer's last token, its prompt
  the whole conversation so far plus the new message. A rejected turn (a full queue, or a
  conversation grown past the model's context) ends the session; no turn starts after the
  scenario's duration.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import simpy

from sim.engine.request import Request
from sim.metrics.records import Status
from sim.scenario import ClosedLoop, Sessions
from sim.workload import ClosedLoopLengths, OpenLoopRequests, SessionPlan, session_chain, think_time_s

Submit = Callable[[Request], bool]

REJECT_BACKOFF_S = 0.01       # a rejected closed-loop client's first wait before retrying
REJECT_BACKOFF_MAX_S = 1.0    # the longest, after repeated rejections


def open_loop_source(env: simpy.Environment, submit: Submit, reqs: OpenLoopRequests,
                     out: list[Request]) -> Generator[simpy.Event, Any, None]:
    """Submit each pre-drawn request at its arrival time."""
    times = reqs.arrival_s.tolist()
    inp = reqs.input_tokens.tolist()
    outp = reqs.output_tokens.tolist()
    hashes = reqs.hash_ids
    for i, t in enumerate(times):
        dt = t - env.now
        if dt > 0:
            yield env.timeout(dt)
        r = Request(i, t, inp[i], outp[i], hash_ids=None if hashes is None else hashes[i])
        out.append(r)
        submit(r)


def _succeed(ev: simpy.Event) -> Callable[[Request], None]:
    """A request's completion callback that triggers `ev`."""
    def done(_r: Request) -> None:
        ev.succeed()
    return done


def closed_loop_client(env: simpy.Environment, submit: Submit, spec: ClosedLoop, lengths: ClosedLoopLengths,
                       think_rng: np.random.Generator, stop_s: float, out: list[Request],
                       next_id: Callable[[], int]) -> Generator[simpy.Event, Any, None]:
    """One client that keeps one request in flight until stop_s."""
    rejected_in_a_row = 0
    while env.now < stop_s:
        inp, outp, hashes = lengths.next()
        done = env.event()
        r = Request(next_id(), env.now, inp, outp, on_done=_succeed(done), hash_ids=hashes)
        out.append(r)
        submit(r)
        yield done
        pause = think_time_s(spec, think_rng)
        if r.status == Status.REJECTED:
            rejected_in_a_row += 1
            pause = max(pause, min(REJECT_BACKOFF_MAX_S, REJECT_BACKOFF_S * 2.0 ** (rejected_in_a_row - 1)))
        else:
            rejected_in_a_row = 0
        if pause > 0:
            yield env.timeout(pause)


def session_source(env: simpy.Environment, submit: Submit, plans: list[SessionPlan], spec: Sessions,
                   chunk_tokens: int | None, stop_s: float, out: list[Request],
                   next_id: Callable[[], int]) -> Generator[simpy.Event, Any, None]:
    """Start each session's process at its start time."""
    for plan in plans:
        dt = plan.start_s - env.now
        if dt > 0:
            yield env.timeout(dt)
        env.process(session_turns(env, submit, plan, spec, chunk_tokens, stop_s, out, next_id))


def session_turns(env: simpy.Environment, submit: Submit, plan: SessionPlan, spec: Sessions,
                  chunk_tokens: int | None, stop_s: float, out: list[Request],
                  next_id: Callable[[], int]) -> Generator[simpy.Event, Any, None]:
    """One session's turns (module docstring)."""
    history = spec.system_prompt_tokens
    for user, answer, think_s in zip(plan.user_tokens, plan.output_tokens, plan.think_s, strict=True):
        if env.now >= stop_s:
            return
        prompt = history + user
        chain = None if chunk_tokens is None else \
            session_chain(plan, spec.system_prompt_tokens, prompt + answer - 1, chunk_tokens)
        done = env.event()
        r = Request(next_id(), env.now, prompt, answer, on_done=_succeed(done), hash_ids=chain)
        out.append(r)
        submit(r)
        yield done
        if r.status == Status.REJECTED:
            return
        history = prompt + answer
        if think_s > 0:
            yield env.timeout(think_s)
