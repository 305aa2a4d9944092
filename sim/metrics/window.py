"""The measurement window W: the span of simulated time that throughput, utilization, levels and
cost describe (docs/metrics.md, "Windows").

* ``arrivals``: W = [warmup_s, duration_s), the steady state of online traffic; its latency
  population is the requests that arrive in W (followed to their end, after duration_s too).
* ``makespan``: W = [warmup_s, t_last], from the start (offline bursts: warmup_s = 0) to the last
  token or rejection of any request, or the end of the simulation if some request is still in
  flight then; its latency population is every request arriving at or after warmup_s. It is the
  default for offline bursts, whose run lasts as long as the work does.

A token counts in W when it is sampled inside W (at an iteration's end); a level counts for the
part of its time inside W.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    kind: str
    start_s: float
    end_s: float

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s

    def holds(self, t_s: np.ndarray) -> np.ndarray:
        """Which instants lie in W (its end is open for `arrivals` and closed for `makespan`)."""
        t = np.asarray(t_s, dtype=float)
        if self.kind == "makespan":
            return (t >= self.start_s) & (t <= self.end_s)
        return (t >= self.start_s) & (t < self.end_s)

    def overlap_s(self, t0_s: np.ndarray, t1_s: np.ndarray) -> np.ndarray:
        """Seconds of each interval [t0, t1] inside W."""
        return np.clip(np.minimum(np.asarray(t1_s, dtype=float), self.end_s)
                       - np.maximum(np.asarray(t0_s, dtype=float), self.start_s), 0.0, None)


def measurement_window(kind: str, warmup_s: float, duration_s: float, last_activity_s: float) -> Window:
    """The window of a run: `last_activity_s` is the last token or rejection of any request (or
    the simulation's end, if a request is still in flight)."""
    if kind == "makespan":
        return Window(kind, warmup_s, max(last_activity_s, warmup_s))
    return Window(kind, warmup_s, duration_s)
