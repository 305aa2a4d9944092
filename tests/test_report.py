"""The report a person reads: built at the end of `run` (or by `run.py report DIR`), one HTML file
with its figures embedded and no external reference, a Markdown page with its PNGs beside it, and
numbers that are the run's own."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

from sim.report.content import HOURS_PER_MONTH, monthly_usd, pct, per_s, seconds, usd, usd_per_m
from simcli.main import main

SHORT = ["--set", "duration_s=120", "--set", "warmup_s=20"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    assert main(["run", str(ROOT / "scenarios/quickstart.yaml"), "--quiet", "--out", str(out), *SHORT]) == 0
    return out


def _images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', html)


def test_a_run_writes_its_report(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    for title in ("The answer", "What was simulated", "Latency", "Over time", "Where the cost goes", "Sensitivity",
                  "Levers"):
        assert f"<h2>{title}</h2>" in html and f"## {title}" in md
    figures = re.findall(r"\]\((report_figures/[a-z_]+\.png)\)", md)
    assert len(figures) == 4
    for rel in figures:
        png = (run_dir / rel).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_the_html_is_one_file_with_its_images_embedded(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    srcs = _images(html)
    assert len(srcs) == 4
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
    # nothing fetched from elsewhere: no links, scripts, stylesheets or fonts outside the file
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html)
    assert "http://" not in html and "https://" not in html and "<script" not in html and "@import" not in html


def test_the_numbers_are_the_runs_own(run_dir):
    s = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert usd(s["usd_per_m_output_tokens"], 3) in html
    assert usd(monthly_usd(s)) in html
    assert monthly_usd(s) == pytest.approx(s["gpus"] * s["price_usd_per_gpu_h"] * HOURS_PER_MONTH)
    assert seconds(s["ttft_s_p99"]) in html and seconds(s["tpot_s_p50"]) in html
    # the GPU's catalog source is shown beside the assumption it backs
    resolved = (run_dir / "scenario.resolved.yaml").read_text(encoding="utf-8")
    assert "RF 1a (V): InferenceX gpu-specs" in resolved and "RF 1a (V): InferenceX gpu-specs" in html


def test_numbers_are_formatted_for_people():
    assert usd_per_m(0.1234) == "$0.123/M" and usd_per_m(float("nan")) == "n/a"
    assert per_s(1234.0) == "1.2k tok/s" and per_s(3_400_000.0) == "3.4M tok/s" and per_s(42.0) == "42.0 tok/s"
    assert pct(0.973) == "97.3%" and seconds(0.0456) == "45.6 ms" and seconds(2.5) == "2.50 s"
    assert usd(12345.6) == "$12,346" and usd(1.5) == "$1.50"


def test_no_report_then_report_command(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "scenarios/quickstart.yaml"), "--quiet", "--no-report", "--out", str(out), *SHORT]) == 0
    assert not (out / "report.html").exists() and not (out / "report_figures").exists()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    # the folder with its report is still this run's: a new run may replace it
    assert main(["run", str(ROOT / "scenarios/quickstart.yaml"), "--quiet", "--out", str(out), *SHORT]) == 0
    assert (out / "report.html").is_file()


def test_report_of_a_tiered_run_shows_its_hits(tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "scenarios/mooncake_prefix_tiers_h200.yaml"), "--quiet", "--out", str(out),
                 "--set", "duration_s=200", "--set", "warmup_s=20"]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "prefix hits: all / HBM / host DRAM / NVMe" in html and "input tokens from cache / computed" in html


@pytest.mark.parametrize("what", ["missing", "sweep without tables", "not a run"])
def test_report_refuses_what_is_not_a_run_folder(tmp_path, capsys, what):
    folder = tmp_path / "x"
    if what != "missing":
        folder.mkdir()
        (folder / ("sweep.json" if what.startswith("sweep") else "notes.txt")).write_text("{}", encoding="utf-8")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(folder) in err
    assert not (folder / "report.html").exists()


def test_report_of_a_run_with_infinite_and_missing_figures(tmp_path):
    """An iteration overhead of 2 s leaves no request within the SLO ($/M SLO-meeting tokens is
    infinite, "inf" in summary.json); with figures missing (null) as well, the report says n/a
    where a number is missing and still draws its figures."""
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "scenarios/quickstart.yaml"), "--quiet", "--out", str(out), *SHORT,
                 "--set", "perf.iteration_overhead_s=2"]) == 0
    path = out / "summary.json"
    s = json.loads(path.read_text(encoding="utf-8"))
    assert s["usd_per_m_slo_output_tokens"] == "inf"
    s.update(usd_per_m_output_tokens=None, ttft_s_p99=None, energy_kwh=None, gpu_busy_fraction=None)
    path.write_text(json.dumps(s), encoding="utf-8")
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    text = re.sub(r'<img src="[^"]*"', "", html)
    assert "n/a" in text and "nan" not in text.lower()
    assert len(_images(html)) == 4


def _browser() -> str | None:
    import shutil
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium here (.ci/run installs the Debian package)")
@pytest.mark.parametrize("which", ["run_dir", "sweep_dir"])
def test_the_page_renders_in_a_real_browser(which, request, tmp_path):
    """Headless Chromium loads report.html from disk with no network: every image decodes (the
    page, with a probe script appended, writes each image's decoded size into the DOM it dumps),
    and a screenshot of the page is not blank."""
    import subprocess

    from matplotlib.image import imread

    run_dir = request.getfixturevalue(which)
    browser = _browser()
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--user-data-dir=" + str(tmp_path / "profile")]
    probe = tmp_path / "probe.html"
    probe.write_text((run_dir / "report.html").read_text(encoding="utf-8").replace(
        "</body>", '<script>document.body.setAttribute("data-images", [...document.images].map(i => '
        'i.complete && i.naturalWidth > 0 ? i.naturalWidth + "x" + i.naturalHeight : "broken").join(","));'
        "</script></body>"), encoding="utf-8")
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    sizes = re.search(r'data-images="([^"]*)"', dom)
    assert sizes is not None, dom[:500]
    decoded = sizes.group(1).split(",")
    assert len(decoded) == len(_images((run_dir / "report.html").read_text(encoding="utf-8"))) >= 4 and all(re.fullmatch(r"[1-9]\d*x[1-9]\d*", d) for d in decoded), decoded
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1100,2400", f"--screenshot={shot}", (run_dir / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[0] >= 2000 and pixels.std() > 0.05           # not one flat colour
    assert (pixels.mean(axis=2) < 0.5).mean() > 0.01                 # text and plot lines drawn in dark


def test_names_from_the_scenario_are_text_not_markup(tmp_path):
    """A model or GPU name with HTML in it is shown, never run, in both pages."""
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "scenarios/custom_inline.yaml"), "--quiet", "--out", str(out),
                 "--set", "duration_s=20", "--set", "warmup_s=2", "--set", "model.name=m<img src=x onerror=alert(1)>",
                 "--set", "hardware.gpu.name=g<script>alert(2)</script>|x"]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "<script>alert" not in html and "<img src=x" not in html and "&lt;script&gt;alert(2)" in html
    assert "<script>" not in md and "<img src=x" not in md and "g&lt;script&gt;alert(2)&lt;/script&gt;\\|x" in md


def test_a_failing_report_keeps_the_runs_results(tmp_path, monkeypatch, capsys):
    import simcli.report_cmd

    def broken(folder, progress=None):
        raise ValueError("a bug in the report")
    monkeypatch.setattr(simcli.report_cmd, "write_report", broken)
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "scenarios/quickstart.yaml"), "--quiet", "--out", str(out), *SHORT]) == 1
    err = capsys.readouterr().err
    assert f"results are in {out}" in err and "a bug in the report" in err and "Traceback" not in err
    assert (out / "summary.json").is_file() and (out / "requests.parquet").is_file()


def test_a_summary_with_missing_counts_and_verdict_reports_na(run_dir, tmp_path):
    import shutil
    folder = tmp_path / "copy"
    shutil.copytree(run_dir, folder)
    s = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    s.update(gpus=None, replicas="inf", slo_met=None, cost_usd=None, kv_tiers_usd_per_gpu_h=None)
    (folder / "summary.json").write_text(json.dumps(s), encoding="utf-8")
    assert main(["report", str(folder)]) == 0
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "cannot be judged against the SLO" in html and "KV tiers" not in html


# ---- sensitivity, sweeps and plans ------------------------------------------------------------------

def test_a_runs_sensitivity_is_simulated_not_guessed(run_dir):
    """Price rows scale $/M exactly; the load rows are the scenario simulated again at ±20% load
    with the run's seed (checked against a direct run)."""
    import pandas as pd

    from sim.runner import run
    from sim.scenario import load_scenario

    t = pd.read_parquet(run_dir / "sensitivity.parquet")
    s = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    base = t[t["lever"] == "as simulated"].iloc[0]
    assert base["usd_per_m_output_tokens"] == pytest.approx(s["usd_per_m_output_tokens"])
    price = t[t["lever"] == "price"].sort_values("change")
    assert list(price["usd_per_m_output_tokens"]) == pytest.approx([0.8 * s["usd_per_m_output_tokens"],
                                                                   1.2 * s["usd_per_m_output_tokens"]])
    up = t[(t["lever"] == "load") & (t["change"] > 0)].iloc[0]
    assert up["setting"] == "rate_scale = 1.2 x trace speed" and up["error"] == ""
    sc = load_scenario(ROOT / "scenarios/quickstart.yaml", overrides={"duration_s": 120, "warmup_s": 20,
                                                                     "workload.trace.rate_scale": 1.2})
    direct = run(sc, seed=s["seed"]).summary
    assert up["usd_per_m_output_tokens"] == direct["usd_per_m_output_tokens"]
    assert up["ttft_s_at_slo_percentile"] == direct["ttft_s_at_slo_percentile"]
    assert set(t["lever"]) == {"as simulated", "price", "load"}      # no speculation, no prefix caching here


@pytest.mark.parametrize(("scenario", "lever", "measured"), [
    ("eagle_llama8b_h100.yaml", "acceptance", "spec_acceptance_rate"),
    ("multiturn_offload_h100.yaml", "prefix reuse", "prefix_hit_rate"),
])
def test_sensitivity_moves_acceptance_and_prefix_hits(tmp_path, scenario, lever, measured):
    import pandas as pd

    out = tmp_path / "run"
    assert main(["run", str(ROOT / "scenarios" / scenario), "--quiet", "--out", str(out),
                 "--set", "duration_s=90", "--set", "warmup_s=10"]) == 0
    t = pd.read_parquet(out / "sensitivity.parquet")
    rows = t[t["lever"] == lever].sort_values("change")
    base = t[t["lever"] == "as simulated"].iloc[0][measured]
    assert (rows["error"] == "").all()
    if lever == "acceptance":        # the acceptance measured follows the lever
        assert len(rows) == 2 and rows.iloc[0][measured] < base < rows.iloc[1][measured]
    else:                            # sessions: 20% of the turns salted lose their hits, and no +20% row
        assert list(rows["change"]) == [-0.2] and rows.iloc[0][measured] < 0.9 * base
        assert rows.iloc[0]["setting"] == "20% of requests with their own cache salt (reuse nothing)"
        assert list(t[t["lever"] == "KV tier capacity"]["change"]) == [-0.2, 0.2]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert f"<td>{lever}</td>" in html


def _study_file(tmp_path: Path, block: dict, rate_per_s: float | None = None) -> Path:
    import yaml

    data = yaml.safe_load((ROOT / "scenarios/chat_poisson_h100_llama8b.yaml").read_text(encoding="utf-8"))
    data.update(duration_s=60, warmup_s=10, **block)
    if rate_per_s is not None:
        data["workload"]["arrivals"]["rate_per_s"] = rate_per_s
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    path = _study_file(tmp, {"sweep": {"axes": {"workload.arrivals.rate_per_s": [5, 30],
                                                "serving.replicas": [1, 2, 4]}, "replications": 2}},
                       rate_per_s=30)
    out = tmp / "out"
    assert main(["sweep", str(path), "--quiet", "--workers", "2", "--out", str(out)]) == 0
    return out


def test_a_sweeps_report_recommends_the_cheapest_row_that_meets_the_slo(sweep_dir):
    import pandas as pd

    agg = pd.read_csv(sweep_dir / "aggregate.csv")
    ok = agg[(agg["slo_met_mean"] == 1.0) & (agg["replications"] == 2)]
    # The load is not a choice: the answer is the cheapest SLO-meeting row at the scenario's load.
    at = agg[agg["workload.arrivals.rate_per_s"] == 30]
    ok_at = ok[ok["workload.arrivals.rate_per_s"] == 30]
    assert 0 < len(ok_at) < len(at)         # some meet the SLO, some do not: the choice is not trivial
    best = ok_at.sort_values(["usd_per_m_output_tokens_mean", "gpus_mean"]).iloc[0]
    html = (sweep_dir / "report.html").read_text(encoding="utf-8")
    assert f"<b>Recommended: replicas={best['serving.replicas']} at 30 requests/s</b>" in html
    assert "The answer is given at 30 requests/s, the scenario's load" in (sweep_dir / "report.md").read_text(
        encoding="utf-8")
    assert usd(best["usd_per_m_output_tokens_mean"], 3) in html
    # ... and across loads, where tokens cost least
    cheapest = ok.sort_values(["usd_per_m_output_tokens_mean", "gpus_mean"]).iloc[0]
    assert (f"Tokens cost least with replicas={cheapest['serving.replicas']} at "
            f"{cheapest['workload.arrivals.rate_per_s']} requests/s") in html
    months = best["gpus_mean"] * best["price_usd_per_gpu_h_mean"] * HOURS_PER_MONTH
    assert usd(months) in html
    for title in ("The answer", "Runners-up", "Cheapest at each load", "How confident we are", "What was simulated",
                  "Latency against load", "Throughput against speed per user, with cost", "Sensitivity"):
        assert f"<h2>{title}</h2>" in html
    assert " ± " in html                     # confidence intervals of the replications
    # The representative run is replication 0 of the recommended point, simulated again: the same figures.
    rows = pd.read_csv(sweep_dir / "sweep.csv")
    row = rows[(rows["point_id"] == best["point_id"]) & (rows["replication"] == 0)].iloc[0]
    rep = json.loads((sweep_dir / "representative" / "summary.json").read_text(encoding="utf-8"))
    assert rep["usd_per_m_output_tokens"] == pytest.approx(row["usd_per_m_output_tokens"], rel=1e-12)
    assert rep["ttft_s_p99"] == pytest.approx(row["ttft_s_p99"], rel=1e-12)
    md = (sweep_dir / "report.md").read_text(encoding="utf-8")
    figures = re.findall(r"\]\((report_figures/[a-z_]+\.png)\)", md)
    assert {"report_figures/latency_load.png", "report_figures/frontier.png", "report_figures/sensitivity.png",
            "report_figures/representative_timeseries.png"} <= set(figures)
    for rel in figures:
        assert (sweep_dir / rel).stat().st_size > 10_000
    assert len(_images(html)) == len(figures) and all(src.startswith("data:image/png;base64,") for src in _images(html))


def test_report_again_reuses_the_representative_run(sweep_dir, capsys):
    before = (sweep_dir / "representative" / "summary.json").stat().st_mtime_ns
    assert main(["report", str(sweep_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(sweep_dir / "report.html")
    assert (sweep_dir / "representative" / "summary.json").stat().st_mtime_ns == before


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plan")
    path = _study_file(tmp, {"plan": {"rate": 20, "replications": 2, "max_replicas": 8, "candidates": [
        {"hardware.gpu": "h100-sxm"}, {"hardware.gpu": "h200"}, {"hardware.gpu": "a100-80g"}]}})
    out = tmp / "plan"
    assert main(["plan", str(path), "--quiet", "--workers", "2", "--out", str(out)]) == 0
    return out


def test_a_plans_report_recommends_its_cheapest_candidate(plan_dir):
    import pandas as pd

    out = plan_dir
    plan = pd.read_csv(out / "plan.csv")
    best = plan[plan["feasible"]].sort_values(["usd_per_m_output_tokens", "gpus"]).iloc[0]
    html = (out / "report.html").read_text(encoding="utf-8")
    gpu = best["overrides"].split("=")[1]
    replicas = int(best["min_replicas"])
    assert f"<b>Recommended: gpu={gpu} x {replicas} replica{'s' if replicas != 1 else ''}</b>" in html
    assert usd(best["usd_per_m_output_tokens"], 3) in html
    assert "from the difference in each of 2 replications, measured on the same traffic" in html
    assert "<h2>Latency against load</h2>" in html and "<h2>Sensitivity</h2>" in html
    assert (out / "representative" / "sensitivity.parquet").is_file()
    assert all((out / "report_figures" / f).stat().st_size > 10_000 for f in ("latency_load.png", "frontier.png"))


def test_a_sweep_of_configurations_recommends_the_cheapest_row_that_meets_the_slo(tmp_path):
    """No load axis: every row is an alternative, and the answer is the cheapest that meets the SLO."""
    import pandas as pd

    path = _study_file(tmp_path, {"sweep": {"axes": {"serving.replicas": [1, 2, 4]}}}, rate_per_s=30)
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--quiet", "--workers", "2", "--out", str(out)]) == 0
    agg = pd.read_csv(out / "aggregate.csv")
    ok = agg[agg["slo_met_mean"] == 1.0]
    assert 0 < len(ok) < len(agg)
    best = ok.sort_values(["usd_per_m_output_tokens_mean", "gpus_mean"]).iloc[0]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert f"<b>Recommended: replicas={best['serving.replicas']}</b>" in html
    assert f"{len(agg)} configurations were simulated; {len(ok)} of them meet the SLO" in html


def test_a_sweep_of_the_load_alone_gives_the_operating_point(tmp_path):
    """One configuration at several loads: the answer is the highest load within the SLO."""
    import pandas as pd

    path = _study_file(tmp_path, {"sweep": {"axes": {"workload.arrivals.rate_per_s": [5, 15, 30, 60]}}})
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--quiet", "--workers", "2", "--out", str(out)]) == 0
    agg = pd.read_csv(out / "aggregate.csv")
    ok = agg[agg["slo_met_mean"] == 1.0]
    assert 1 < len(ok) < len(agg)
    top = ok["workload.arrivals.rate_per_s"].max()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert f"<b>Operating point: {top} requests/s</b>" in html
    assert "<h2>Other loads within the SLO</h2>" in html and "<h2>Runners-up</h2>" not in html
    assert "<h2>Price that would change the answer</h2>" not in html    # other loads are not alternatives


def test_no_report_for_sweep_and_plan(tmp_path):
    path = _study_file(tmp_path, {"sweep": {"axes": {"serving.replicas": [1, 2]}}})
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--quiet", "--workers", "1", "--no-report", "--out", str(out)]) == 0
    assert not (out / "report.html").exists() and not (out / "representative").exists()
    assert main(["report", str(out)]) == 0            # later, from the folder alone
    assert (out / "report.html").is_file() and (out / "representative" / "summary.json").is_file()
    plan = _study_file(tmp_path, {"plan": {"rate": 5, "replications": 1, "max_replicas": 2}})
    pout = tmp_path / "plan"
    assert main(["plan", str(plan), "--quiet", "--workers", "1", "--no-report", "--out", str(pout)]) == 0
    assert not (pout / "report.html").exists()


def test_a_sweep_folder_from_before_reports_still_reports(sweep_dir, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(sweep_dir, old)
    shutil.rmtree(old / "representative")
    manifest = json.loads((old / "sweep.json").read_text(encoding="utf-8"))
    del manifest["base"], manifest["base_dir"]
    (old / "sweep.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert main(["report", str(old)]) == 0
    assert "written before reports of sweeps and plans" in capsys.readouterr().out
    html = (old / "report.html").read_text(encoding="utf-8")
    assert "<b>Recommended:" in html and "No representative run in this folder" in html


def _tampered(src: Path, tmp_path: Path, manifest: str, change) -> Path:
    import shutil

    out = tmp_path / "tampered"
    shutil.copytree(src, out)
    data = json.loads((out / manifest).read_text(encoding="utf-8"))
    change(data)
    (out / manifest).write_text(json.dumps(data), encoding="utf-8")
    return out


@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(spec={"axes": 5}), "sweep.json: spec.axes: Input should be a valid dictionary (got 5)"),
    (lambda m: m.update(base=[1, 2]), "sweep.json: base: Input should be a valid dictionary"),
    (lambda m: m["spec"].update(replications="x"), "sweep.json: spec.replications: Input should be a valid integer"),
    (lambda m: m.update(base={"name": "x"}), "the scenario its manifest records, with rate_per_s="),
])
def test_a_tampered_sweep_manifest_is_named_not_a_traceback(sweep_dir, tmp_path, capsys, change, message):
    out = _tampered(sweep_dir, tmp_path, "sweep.json", change)
    assert main(["report", str(out)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(candidate_overrides=[{}]), "plan.json: candidate_overrides: 1 entries for 3 candidates"),
    (lambda m: m.update(candidates=[1, 2]), "plan.json: candidates.0: Input should be a valid dictionary"),
    (lambda m: m.update(cheapest_candidate=7), "plan.json: cheapest_candidate: 7 is not one of the candidates"),
    (lambda m: [c.update(candidate=9) for c in m["candidates"]], "plan.json: candidates: expected candidates numbered"),
    (lambda m: m.update(mode="zzz"), "plan.json: mode: Input should be 'min_replicas' or 'max_load' (got 'zzz')"),
])
def test_a_tampered_plan_manifest_is_named_not_a_traceback(plan_dir, tmp_path, capsys, change, message):
    out = _tampered(plan_dir, tmp_path, "plan.json", change)
    assert main(["report", str(out)]) == 2
    assert message in capsys.readouterr().err


def test_a_plan_folder_from_before_reports_labels_its_candidates(plan_dir, tmp_path):
    def old(m):
        del m["candidate_overrides"], m["base"], m["base_dir"]
    out = _tampered(plan_dir, tmp_path, "plan.json", old)
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "gpu=a100-80g" in html and "the scenario as is" not in html


@pytest.mark.parametrize("damage", ["summary.json", "scenario.resolved.yaml", "sensitivity.parquet", "requests.parquet"])
def test_a_damaged_representative_run_is_simulated_again(sweep_dir, tmp_path, damage):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(sweep_dir, out)
    good = json.loads((sweep_dir / "representative" / "summary.json").read_text(encoding="utf-8"))
    target = out / "representative" / damage
    if damage == "requests.parquet":
        target.unlink()
    else:
        target.write_text("{not: [valid", encoding="utf-8")
    assert main(["report", str(out)]) == 0
    again = json.loads((out / "representative" / "summary.json").read_text(encoding="utf-8"))
    assert {k: v for k, v in again.items() if "wall" not in k} == {k: v for k, v in good.items() if "wall" not in k}
    assert (out / "representative" / "sensitivity.parquet").stat().st_size > 100


def test_a_file_where_the_representative_run_goes_is_named(sweep_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(sweep_dir, out)
    shutil.rmtree(out / "representative")
    (out / "representative").write_text("mine", encoding="utf-8")
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert "where the report keeps the recommended configuration's run" in err and "--out" not in err
    assert (out / "representative").read_text(encoding="utf-8") == "mine"
