"""GPU power: a chip draws idle power plus a share of (TDP - idle) that follows its utilization.

Assumption (docs/model-assumptions.md, "Power"): a GPU's dynamic power follows the achieved
utilization of whichever resource binds its work, tensor cores or HBM. An iteration whose binding
resource runs at its large-kernel rate for the whole iteration (compute-bound prefill at the
calibrated compute efficiency, decode of a large batch streaming HBM at the calibrated bandwidth
efficiency) draws TDP; one that spends part of its time in launch gaps, small kernels, collectives
or host overhead draws proportionally less; an idle GPU draws its idle power:

    P_chip = idle_w + (tdp_w - idle_w) x U,
    U      = sum over iterations of util_s / provisioned seconds,
    util_s = max(FLOPs / (peak of their precision x compute_efficiency),
                 bytes / (HBM bw x hbm_bw_efficiency))

per iteration (`StepModel.utilization_s`): the work at the large-kernel rates, so the shape
inefficiencies (small GEMMs, slower attention kernels, kernel start-up) lengthen the step without
adding power. Under this assumption J/token at light load is no longer
charged at TDP for every busy second: a batch-1 decode step of a large model spends most of its
time in fixed per-layer costs and collectives, and draws accordingly. The parameters are the GPU's
`idle_w` and `tdp_w` (catalog values with sources, overridable per scenario through
`hardware.overrides`), and `cost.power_model: busy` restores the former assumption (power by busy
fraction). A measured step table knows no bytes or FLOPs, so with it every iteration counts as
fully utilized (KV transfers to or from the host count as idle with either step model).

Decode runs are one event each, so their utilization-seconds are summed after the simulation: a
plain decode step of B sequences has util_s = max(m0 + m1 S, c0 + c1 S) along the run's linear
context path S_j, the same two-line form as its step time, summed in closed form.
"""

from __future__ import annotations

import numpy as np

from sim.catalog import GpuSpec
from sim.engine.kv_integral import DecodeRunLog, run_pieces
from sim.perf.shape import StepModel


def chip_power_w(gpu: GpuSpec, utilization: float) -> float:
    """The chip's draw at a utilization (or, under the busy model, a busy fraction) in [0, 1]."""
    return gpu.idle_w + (gpu.tdp_w - gpu.idle_w) * min(1.0, max(0.0, utilization))


def decode_runs_utilization_s(log: DecodeRunLog, step_model: StepModel) -> tuple[np.ndarray, np.ndarray]:
    """(record indices, utilization-seconds) of every logged decode run: sum over its steps j of
    a + b S_j, piece by piece (kv_integral.run_pieces), S_j = first + slope j."""
    t = log.runs()
    total = np.zeros(len(t))
    first, slope = t[:, 5], t[:, 6]
    for idx, lo, hi, a, b in run_pieces(t, step_model.decode_utilization):
        n = (hi - lo).astype(float)
        total[idx] += n * (a + b * first[idx]) + b * slope[idx] * (lo + hi - 1) * n / 2.0
    return t[:, 0].astype(np.int64), total
