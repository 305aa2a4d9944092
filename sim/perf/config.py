"""Step-time model parameters as a scenario writes them (`perf:` block), with calibrated defaults.

The defaults are the values fitted to published measurements, stored in
``sim/data/calibration.yaml`` (written by ``run.py calibrate --reference``). That file is read the
first time a default is needed, not at import. ``profile:`` loads another calibration profile;
keys given explicitly override both. Meaning and method: docs/model-assumptions.md.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from sim.datapath import DataPath, resolve_data_path
from sim.errors import one_line
from sim.input_model import InputModel
from sim.yamlio import load_yaml

#: Fallbacks where calibration.yaml lacks a value (the pre-calibration defaults).
FALLBACK: dict[str, float] = {
    "hbm_bw_efficiency": 0.80, "compute_efficiency": 0.55, "comm_efficiency": 0.70,
    "collective_latency_s": 8e-6, "iteration_overhead_s": 1.5e-3, "per_seq_overhead_s": 0.0,
    "activation_traffic_factor": 1.0, "gemm_half_tokens": 0.0, "hbm_half_bytes_per_layer": 0.0,
    "layer_overhead_s": 0.0, "moe_layer_overhead_s": 0.0, "attention_efficiency": 0.0,
    "host_overhead_s": 0.0, "host_overhead_per_seq_s": 0.0, "all_to_all_efficiency": 0.80,
    # DeepEP V2 on Hopper with ConnectX-7 (400 Gb/s, 50 GB/s a GPU): dispatch 90 GB/s over 8 x 2 GPUs
    # and 61 GB/s over 8 x 4, logical bandwidth with the in-node share included, so 45-46 GB/s over
    # RDMA (deepseek-ai/DeepEP README, Performance).
    "all_to_all_scale_out_efficiency": 0.90,
}


@cache
def calibrated_defaults() -> dict[str, float]:
    """The fitted step-time parameters bundled with the package (read once, on first use)."""
    text = resources.files("sim").joinpath("data", "calibration.yaml").read_text(encoding="utf-8")
    fitted = (load_yaml(text) or {}).get("perf", {})
    return {k: float(fitted.get(k, v)) for k, v in FALLBACK.items()}



class PerfCfg(InputModel):
    """Step-time model parameters (docs/model-assumptions.md)."""

    hbm_bw_efficiency: float = Field(default_factory=lambda: calibrated_defaults()["hbm_bw_efficiency"], ge=1e-3, le=1)
    compute_efficiency: float = Field(default_factory=lambda: calibrated_defaults()["compute_efficiency"], ge=1e-3, le=1)
    comm_efficiency: float = Field(default_factory=lambda: calibrated_defaults()["comm_efficiency"], ge=1e-3, le=1)
    all_to_all_efficiency: float = Field(
        default_factory=lambda: calibrated_defaults()["all_to_all_efficiency"], ge=1e-3, le=1,
        description="fraction of the scale-up (NVLink) rate the expert all-to-all (dispatch and combine) reaches")
    all_to_all_scale_out_efficiency: float = Field(
        default_factory=lambda: calibrated_defaults()["all_to_all_scale_out_efficiency"], ge=1e-3, le=1,
        description="fraction of the scale-out network's rate the expert all-to-all reaches across domains "
        "(0.9: DeepEP's measured RDMA bandwidth)")
    collective_latency_s: float = Field(default_factory=lambda: calibrated_defaults()["collective_latency_s"], ge=0, le=1,
                                        description="latency per log2(tp) step of an all-reduce")
    iteration_overhead_s: float = Field(default_factory=lambda: calibrated_defaults()["iteration_overhead_s"], ge=0, le=10)
    per_seq_overhead_s: float = Field(default_factory=lambda: calibrated_defaults()["per_seq_overhead_s"], ge=0, le=1,
                                      description="per sequence in an iteration (sampling, scheduling)")
    activation_traffic_factor: float = Field(
        default_factory=lambda: calibrated_defaults()["activation_traffic_factor"], ge=0, le=1_000)
    attention_efficiency: float = Field(
        default_factory=lambda: calibrated_defaults()["attention_efficiency"], ge=0, le=1,
        description="fraction of its precision's peak attention kernels reach (0: compute_efficiency)")
    gemm_half_tokens: float = Field(default_factory=lambda: calibrated_defaults()["gemm_half_tokens"], ge=0,
                                    le=1_000_000, description="GEMM tokens at which half the large-batch FLOP rate is reached")
    hbm_half_bytes_per_layer: float = Field(
        default_factory=lambda: calibrated_defaults()["hbm_half_bytes_per_layer"], ge=0, le=1e12,
        description="bytes per layer at which a step reaches half the large-kernel bandwidth")
    layer_overhead_s: float = Field(default_factory=lambda: calibrated_defaults()["layer_overhead_s"], ge=0, le=1,
                                    description="fixed time per transformer layer per iteration")
    moe_layer_overhead_s: float = Field(default_factory=lambda: calibrated_defaults()["moe_layer_overhead_s"], ge=0,
                                        le=1, description="extra fixed time per mixture-of-experts layer per iteration")
    host_overhead_s: float = Field(
        default_factory=lambda: calibrated_defaults()["host_overhead_s"], ge=0, le=10,
        description="host work per iteration (scheduling, input preparation, output processing) that adds to "
        "the step unless the engine overlaps it with the GPU (serving.batching.overlap_host_work)")
    host_overhead_per_seq_s: float = Field(
        default_factory=lambda: calibrated_defaults()["host_overhead_per_seq_s"], ge=0, le=1,
        description="host work per sequence in an iteration, exposed like host_overhead_s")
    profile: str | None = Field(default=None, description="calibration profile file the values came from")
    step_table: DataPath | None = Field(default=None, description="CSV of measured iteration times")

    @field_validator("attention_efficiency")
    @classmethod
    def _attention_floor(cls, v: float) -> float:
        # Below 0.1% of peak, step times overflow and stop meaning anything (as for the others).
        if 0.0 < v < 1e-3:
            raise ValueError(f"must be 0 (as compute_efficiency) or at least 0.001, got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _load_profile(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or data.get("profile") is None:
            return data
        path = resolve_data_path(str(data["profile"]), info)
        name = data["profile"]
        if Path(path).is_dir():
            raise ValueError(f"profile {name!r} is a folder, not a perf profile file")
        try:
            prof = load_yaml(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ValueError(f"profile {name!r} is not valid YAML: {one_line(err)}") from None
        except UnicodeDecodeError:
            raise ValueError(f"profile {name!r} is not UTF-8 text") from None
        if not isinstance(prof, dict) or prof.get("kind") != "perf-profile" or not isinstance(prof.get("perf"), dict):
            raise ValueError(f"profile {name!r} is not a perf profile written by 'run.py calibrate'")
        known = set(cls.model_fields) - {"profile", "step_table"}
        values = {k: v for k, v in prof["perf"].items() if k in known}
        # Checked here so that a bad value names the profile it came from, not the scenario.
        try:
            cls.model_validate(values)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(x) for x in first["loc"])
            raise ValueError(f"profile {name!r}: {field}: {first['msg']} (got {first.get('input')!r})") from None
        return {**values, **data, "profile": path}
