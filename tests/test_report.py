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
    for title in ("The answer", "What was simulated", "Latency", "Over time", "Where the cost goes", "Levers"):
        assert f"<h2>{title}</h2>" in html and f"## {title}" in md
    figures = re.findall(r"\]\((report_figures/[a-z_]+\.png)\)", md)
    assert len(figures) == 3
    for rel in figures:
        png = (run_dir / rel).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_the_html_is_one_file_with_its_images_embedded(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    srcs = _images(html)
    assert len(srcs) == 3
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


@pytest.mark.parametrize("what", ["missing", "sweep", "not a run"])
def test_report_refuses_what_is_not_a_run_folder(tmp_path, capsys, what):
    folder = tmp_path / "x"
    if what != "missing":
        folder.mkdir()
        (folder / ("sweep.json" if what == "sweep" else "notes.txt")).write_text("{}", encoding="utf-8")
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
    assert len(_images(html)) == 3


def _browser() -> str | None:
    import shutil
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium here (.ci/run installs the Debian package)")
def test_the_page_renders_in_a_real_browser(run_dir, tmp_path):
    """Headless Chromium loads report.html from disk with no network: every image decodes (the
    page, with a probe script appended, writes each image's decoded size into the DOM it dumps),
    and a screenshot of the page is not blank."""
    import subprocess

    from matplotlib.image import imread

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
    assert len(decoded) == 3 and all(re.fullmatch(r"[1-9]\d*x[1-9]\d*", d) for d in decoded), decoded
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

    def broken(folder):
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
