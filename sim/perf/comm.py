"""Collective communication of a replica's GPUs: how long moving activations between them takes.

Links (sim/catalog.py GpuSpec): the scale-up link (NVLink, `scale_up_gb_s` per GPU and direction)
joins the GPUs of one scale-up domain (8 on HGX, 72 on NVL72); the scale-out network
(`scale_out_gb_s` per GPU and direction, a 400 Gb/s NIC = 50 GB/s) joins domains. Bandwidths are
reached at `comm_efficiency` of the line rate (perf block, calibrated).

* All-reduce over n GPUs (tensor parallelism, twice per layer): a ring moves 2 (n - 1) / n of the
  buffer per GPU, t = 2 (n - 1) / n x bytes / link + log2(n) x step latency. A group larger than
  the domain reduces over the scale-out link, whose latency adds to each step.
* All-to-all over n GPUs (expert parallelism's dispatch and combine): each GPU sends `bytes` spread
  evenly over the n GPUs (its own share stays local); the share bound for GPUs of its own domain
  goes over the scale-up link while the rest goes over the scale-out network at the same time,
  t = max(bytes_in_domain / scale_up, bytes_out_of_domain / scale_out) + latency of the slower
  path. In the bandwidth-bound limit it is the bytes over the bandwidth of the path they take.
* Pipeline transfer between consecutive stages: the micro-batch's hidden states once, over the
  scale-up link when both stages sit in one domain, else over the scale-out network.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Links(NamedTuple):
    """The two networks a GPU reaches its peers over, at their achieved rates."""

    scale_up_b_s: float        # bytes/s per GPU and direction, efficiency applied
    scale_out_b_s: float
    domain: int                # GPUs per scale-up domain
    step_latency_s: float      # per collective step inside a domain
    scale_out_latency_s: float  # added per step that crosses domains


def allreduce_coeffs(per_token_bytes: float, n: int, links: Links) -> tuple[float, float]:
    """(seconds per token, fixed seconds) of one ring all-reduce of `per_token_bytes` per token
    over n GPUs (module docstring)."""
    if n <= 1:
        return 0.0, 0.0
    cross = n > links.domain
    link = links.scale_out_b_s if cross else links.scale_up_b_s
    step = links.step_latency_s + (links.scale_out_latency_s if cross else 0.0)
    return 2.0 * (n - 1) / n * per_token_bytes / link, math.log2(n) * step


def allreduce_s(buffer_bytes: float, n: int, links: Links) -> float:
    """Ring all-reduce of `buffer_bytes` over n GPUs."""
    per_byte_s, fixed_s = allreduce_coeffs(1.0, n, links)
    return per_byte_s * buffer_bytes + fixed_s


def all_to_all_s(bytes_per_gpu: float, n: int, links: Links) -> float:
    """All-to-all over n GPUs, each sending `bytes_per_gpu` spread evenly over all n (module
    docstring). The group fills whole domains from the first; a GPU of a partly filled last domain
    has fewer peers near it and sends more over the scale-out network, so the slowest GPU is
    either one of a full domain (more bytes over NVLink) or one of the last (more over scale-out)."""
    if n <= 1 or bytes_per_gpu <= 0.0:
        return 0.0
    full = min(n, links.domain)
    sizes = {full, n % full or full}          # sizes of the domains the group spans
    return max(_a2a_from_domain(bytes_per_gpu, n, s, links) for s in sizes)


def _a2a_from_domain(bytes_per_gpu: float, n: int, domain_gpus: int, links: Links) -> float:
    """All-to-all time of a GPU whose domain holds `domain_gpus` of the group: its NVLink and
    scale-out shares move at the same time."""
    near = bytes_per_gpu * (domain_gpus - 1) / n
    far = bytes_per_gpu * (n - domain_gpus) / n
    t_near = near / links.scale_up_b_s + links.step_latency_s if near > 0 else 0.0
    t_far = far / links.scale_out_b_s + links.step_latency_s + links.scale_out_latency_s if far > 0 else 0.0
    return max(t_near, t_far)


def stage_transfer_s(bytes_: float, same_domain: bool, links: Links) -> float:
    """One pipeline hand-over of `bytes_` between consecutive stages."""
    if bytes_ <= 0.0:
        return 0.0
    if same_domain:
        return bytes_ / links.scale_up_b_s + links.step_latency_s
    return bytes_ / links.scale_out_b_s + links.step_latency_s + links.scale_out_latency_s
