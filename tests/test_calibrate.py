"""Calibration recovers known parameters from synthetic measurements made by the model itself;
profiles load into scenarios; bad measurement files get clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, base_dict

from sim.calibrate import Measurement, fit, predict, read_measurements_csv, reference_points
from sim.errors import InputError
from sim.scenario import scenario_from_dict

TRUE = {"hbm_bw_efficiency": 0.62, "compute_efficiency": 0.41, "iteration_overhead_s": 2.5e-3,
        "per_seq_overhead_s": 2.0e-5, "gemm_half_tokens": 180.0, "hbm_half_bytes_per_layer": 3e7,
        "layer_overhead_s": 2.0e-5, "moe_layer_overhead_s": 6.0e-5, "attention_efficiency": 0.3}
CONFIGS = [{"model": "llama-3.1-8b", "gpu": "h100-sxm", "tp": 1, "weights": "bf16", "kv_cache": "bf16", "compute": "bf16"},
           {"model": "llama-3.1-70b", "gpu": "h200", "tp": 2, "weights": "fp8", "kv_cache": "fp8", "compute": "fp8"},
           {"model": "gpt-oss-120b", "gpu": "b200", "tp": 1, "weights": "fp4", "kv_cache": "fp8", "compute": "fp8"}]
SHAPES = [(1, 500, 0), (8, 2000, 0), (64, 1000, 0), (256, 1500, 0), (512, 800, 0), (0, 0, 512), (0, 0, 4096),
          (0, 0, 16384), (32, 1000, 2048)]


def synthetic_steps() -> list[Measurement]:
    ms = []
    for c in CONFIGS:
        for b, ctx, pre in SHAPES:
            m = Measurement(f"{c['model']}-{b}-{ctx}-{pre}", "step", c, 1.0, decode_seqs=b, context_tokens=ctx,
                            prefill_tokens=pre)
            ms.append(Measurement(**{**m.__dict__, "measured": predict(m, TRUE)}))
    return ms


def test_fit_recovers_known_step_parameters():
    f = fit(synthetic_steps())
    for k, v in TRUE.items():
        assert f.params[k] == pytest.approx(v, rel=0.02), k
    assert f.rms_log_error < 1e-3


def test_fit_recovers_compute_efficiency_from_simulated_throughput():
    c = CONFIGS[0]
    base = Measurement("t", "throughput", c, 1.0, input_tokens=2048, output_tokens=64, requests=200)
    truth = {"compute_efficiency": 0.35}
    ms = [Measurement(**{**base.__dict__, "id": f"t{n}", "input_tokens": n, "measured": predict(
        Measurement(**{**base.__dict__, "input_tokens": n}), truth)}) for n in (1024, 4096)]
    f = fit(ms, ("compute_efficiency",))
    assert f.params["compute_efficiency"] == pytest.approx(0.35, rel=0.03)


def test_reference_points_and_calibrated_defaults_are_consistent():
    ms, skipped, header = reference_points()
    assert len(ms) >= 20 and {m.kind for m in ms} == {"step", "throughput"} and len(skipped) >= 10 and all(s["reason"] for s in skipped)
    cal = yaml.safe_load((ROOT / "sim" / "data" / "calibration.yaml").read_text())
    sc = scenario_from_dict(base_dict())
    for k, v in cal["perf"].items():
        assert getattr(sc.perf, k) == pytest.approx(v)
    assert {p["id"] for p in cal["points"]} == {m.id for m in ms}


def test_profile_is_loaded_and_explicit_keys_win(tmp_path):
    prof = {"kind": "perf-profile", "perf": {"hbm_bw_efficiency": 0.5, "compute_efficiency": 0.3,
                                             "per_seq_overhead_s": 1e-5}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(prof), encoding="utf-8")
    sc = scenario_from_dict(base_dict(perf={"profile": "p.yaml", "compute_efficiency": 0.9}), base_dir=tmp_path)
    assert sc.perf.hbm_bw_efficiency == 0.5 and sc.perf.compute_efficiency == 0.9
    assert sc.perf.per_seq_overhead_s == 1e-5
    (tmp_path / "bad.yaml").write_text("hello: 1\n", encoding="utf-8")
    with pytest.raises(InputError, match="not a perf profile"):
        scenario_from_dict(base_dict(perf={"profile": "bad.yaml"}), base_dir=tmp_path)


HEADER = "id,kind,model,gpu,tp,weights,kv_cache,compute,decode_seqs,context_tokens,prefill_tokens,step_time_s\n"


def test_cli_writes_a_profile_scenarios_can_use(tmp_path):
    rows = "".join(f"{m.id},step,{m.config['model']},{m.config['gpu']},{m.config['tp']},{m.config['weights']},"
                   f"{m.config['kv_cache']},{m.config['compute']},{m.decode_seqs},{m.context_tokens},"
                   f"{m.prefill_tokens},{m.measured!r}\n" for m in synthetic_steps())
    csv = tmp_path / "m.csv"
    csv.write_text(HEADER + rows, encoding="utf-8")
    out = tmp_path / "prof.yaml"
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "calibrate", str(csv), "--out", str(out), "--quiet"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sc = scenario_from_dict(base_dict(perf={"profile": "prof.yaml"}), base_dir=tmp_path)
    assert sc.perf.compute_efficiency == pytest.approx(TRUE["compute_efficiency"], rel=0.02)


@pytest.mark.parametrize("body,needle", [
    ("x,step,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,4,100,0,abc\n", "'step_time_s' must be a number"),
    ("x,steps,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,4,100,0,0.01\n", "'kind' must be"),
    ("x,step,llama-3.1-8b,h900,1,bf16,bf16,bf16,4,100,0,0.01\n", "h900"),
    ("x,step,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,,100,0,0.01\n", "decode_seqs"),
])
def test_bad_measurement_files(tmp_path, body, needle):
    csv = tmp_path / "m.csv"
    csv.write_text(HEADER + body, encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_measurements_csv(csv)
    assert needle in str(err.value) and "line 2" in str(err.value)
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "calibrate", str(csv), "--out", str(tmp_path / "o.yaml")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and needle in r.stderr and not (tmp_path / "o.yaml").exists()
