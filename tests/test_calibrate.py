"""Calibration recovers known parameters from synthetic measurements made by the model itself;
profiles load into scenarios; bad measurement files get clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, base_dict

from sim.calibrate import Measurement, fit, predict, read_measurements_csv, reference_points, scenario_data
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
    assert len(ms) >= 38 and {m.kind for m in ms} == {"step", "throughput"} and all(s["reason"] for s in skipped)
    # every DEP point of the perf overview is simulated (issue 11), none skipped
    assert sum(1 for m in ms if m.config.get("dp_attention", 1) > 1) == 12 and not skipped
    checks = header["scenario_checks"]
    assert len(checks) == 3 and all((ROOT / c["scenario"]).is_file() and c["measured"] > 0 for c in checks)
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


def test_a_parameter_no_measurement_depends_on_is_held():
    """Dense-only step measurements cannot see the MoE layer cost: it keeps its start value and the
    fit says so, instead of wandering to an arbitrary value that a MoE scenario would inherit."""
    ms = [m for m in synthetic_steps() if m.config["model"] != "gpt-oss-120b"]
    f = fit(ms, ("hbm_bw_efficiency", "layer_overhead_s", "moe_layer_overhead_s"),
            start={**TRUE, "hbm_bw_efficiency": 0.5, "layer_overhead_s": 1e-5, "moe_layer_overhead_s": 4.2e-5})
    assert "moe_layer_overhead_s" not in f.params and f.base["moe_layer_overhead_s"] == 4.2e-5
    assert any("moe_layer_overhead_s held" in n for n in f.notes)
    assert f.params["hbm_bw_efficiency"] == pytest.approx(TRUE["hbm_bw_efficiency"], rel=0.02)
    assert f.params["layer_overhead_s"] == pytest.approx(TRUE["layer_overhead_s"], rel=0.02)


def test_trtllm_bench_limits_by_hand():
    """Llama-3.3-70B NVFP4 on one B200 at 1k/1k, as trtllm-bench sizes it: (180e9 B in GiB - the
    checkpoint's stored elements x 0.5 B in GiB) x 0.95 / (2 x 80 layers x 8 heads x 128 x 1 B x 2048
    tokens in GiB) = about 453 requests -> batch 512 (rounded up to 128s), tokens 453 x 2 -> at least
    2,048. The NVFP4 checkpoint stores its linear layers two values a byte plus an FP8 scale per 16
    (1/2 + 1/16 elements per parameter) and the embedding and LM head whole. An MXFP4 checkpoint keeps
    TensorRT-LLM's defaults."""
    from sim.calibrate import trtllm_bench_limits
    from sim.catalog import model_catalog

    cfg = {"model": "llama-3.3-70b", "gpu": "b200", "tp": 1, "weights": "fp4", "kv_cache": "fp8", "compute": "fp4"}
    gib = 1024.0 ** 3
    m = model_catalog()["llama-3.3-70b"]
    stored = (m.params_total - 2 * m.lm_head_params) * (0.5 + 1 / 16) + 2 * m.lm_head_params
    free = 180e9 / gib - stored * 0.5 / gib
    requests = free * 0.95 / (2 * 80 * 8 * 128 * 1.0 * 2048 / gib)
    assert 384 < requests <= 512
    assert trtllm_bench_limits(cfg, 1024, 1024) == (512, 2048)
    assert trtllm_bench_limits(cfg, 1024, 1024, "mxfp4") == (2048, 8192)


def test_duplicate_columns_and_empty_parameter_lists_are_refused(tmp_path):
    (tmp_path / "dup.csv").write_text(HEADER.replace("model,", "model,model,") + "a,step,x,x,h100-sxm,1,bf16,bf16,bf16,1,1,0,0.01\n")
    with pytest.raises(InputError, match=r"names column\(s\) \['model'\] more than once"):
        read_measurements_csv(tmp_path / "dup.csv")
    with pytest.raises(InputError, match="no parameters"):
        fit(synthetic_steps()[:3], ())
    with pytest.raises(InputError, match="named more than once"):
        fit(synthetic_steps()[:3], ("compute_efficiency", "compute_efficiency"))


def test_a_bad_value_inside_a_profile_names_the_profile(tmp_path):
    (tmp_path / "p.yaml").write_text("kind: perf-profile\nperf: {attention_efficiency: 5}\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"profile 'p.yaml': attention_efficiency: .*less than or equal to 1"):
        scenario_from_dict(base_dict(perf={"profile": "p.yaml"}), base_dir=tmp_path)
    (tmp_path / "b.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="not UTF-8"):
        scenario_from_dict(base_dict(perf={"profile": "b.yaml"}), base_dir=tmp_path)


def test_measurements_sharing_an_id_are_predicted_each_with_a_pool():
    """Ids are labels: two throughput rows with the same id but different lengths keep their own
    predictions when the evaluations go through an executor."""
    from sim.sweep import inline_executor

    c = CONFIGS[0]
    a = Measurement("same", "throughput", c, 1.0, input_tokens=1024, output_tokens=64, requests=100)
    b = Measurement("same", "throughput", c, 1.0, input_tokens=4096, output_tokens=64, requests=100)
    truth = {"compute_efficiency": 0.35}
    ms = [Measurement(**{**m.__dict__, "measured": predict(m, truth)}) for m in (a, b)]
    assert ms[0].measured != ms[1].measured
    with inline_executor() as ex:
        f = fit(ms, ("compute_efficiency",), executor=ex)
    assert list(f.table["predicted"]) == pytest.approx([m.measured for m in ms], rel=0.03)


def test_trtllm_bench_limits_of_a_dep_layout():
    """DeepSeek-R1 FP8 as DEP8 on H200 at 1k/1k: the tool runs with --tp 8 (every GPU of the layout)
    and counts DeepSeek's KV as 2 x 61 layers x max(8, 128) heads x 56 (hidden / heads: its HF config
    has no head_dim) x 1 B per token: (8 x 141e9 B - 671e9 params x 1 B) in GiB x 0.95 / (that x 2000
    tokens) = about 242 requests -> 256 sequences and 2,048 tokens, which each attention rank applies
    to its own batch."""
    from sim.calibrate import trtllm_bench_limits
    from sim.catalog import model_catalog

    m = model_catalog()["deepseek-r1"]
    gib = 1024.0 ** 3
    requests = (8 * 141e9 - m.params_total) / gib * 0.95 / (2 * 61 * 128 * 56 * 2000 / gib)
    assert 224 < requests <= 256
    cfg = {"model": "deepseek-r1", "gpu": "h200", "tp": 1, "dp_attention": 8, "ep": 8, "weights": "fp8",
           "kv_cache": "fp8", "compute": "fp8"}
    assert trtllm_bench_limits(cfg, 1000, 1000) == (256, 2048)


def test_measurements_csv_takes_dep_layouts(tmp_path):
    """Optional dp_attention and ep columns describe a DEP layout; the point simulates as one."""
    header = HEADER.replace("compute,", "compute,dp_attention,ep,")
    (tmp_path / "m.csv").write_text(header + "a,step,deepseek-r1,h200,1,fp8,fp8,fp8,8,8,64,2000,0,0.05\n"
                                    + "b,step,deepseek-r1,h200,8,fp8,fp8,fp8,,,64,2000,0,0.05\n")
    ms = read_measurements_csv(tmp_path / "m.csv")
    assert ms[0].config["dp_attention"] == 8 and ms[0].config["ep"] == 8 and "dp_attention" not in ms[1].config
    sc = scenario_from_dict(scenario_data(ms[0], {}))
    assert (sc.serving.parallelism.dp_attention, sc.serving.parallelism.ep) == (8, 8)
    # a step row's batch is per rank: 8 ranks of 64 cost more than one TP8 group of 64
    assert predict(ms[0], {}) > 0 and predict(ms[0], {}) != predict(ms[1], {})
    (tmp_path / "bad.csv").write_text(header + "a,step,deepseek-r1,h200,1,fp8,fp8,fp8,3,3,64,2000,0,0.05\n")
    with pytest.raises(InputError, match="ep=3"):
        read_measurements_csv(tmp_path / "bad.csv")


def test_unknown_columns_and_benchmarks_that_complete_nothing_are_refused(tmp_path):
    """A mis-cased or misspelt column would silently fit another layout; a throughput row whose
    requests can never run would stop the fit with a traceback: both are named, exit 2."""
    header = HEADER.replace("compute,", "compute,EP,")
    (tmp_path / "case.csv").write_text(header + "a,step,deepseek-r1,h200,8,fp8,fp8,fp8,8,64,2000,0,0.05\n")
    with pytest.raises(InputError, match=r"unknown column\(s\) \['EP'\]"):
        read_measurements_csv(tmp_path / "case.csv")
    (tmp_path / "long.csv").write_text(
        "id,kind,model,gpu,tp,weights,kv_cache,compute,input_tokens,output_tokens,requests,output_tok_per_s_per_gpu\n"
        "a,throughput,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,200000,100,5,1500\n")
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "calibrate", str(tmp_path / "long.csv"), "--out",
                        str(tmp_path / "p.yaml")], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and "completes no request (5 context_too_long)" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "p.yaml").exists()
