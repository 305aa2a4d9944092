"""Every command as a person types it: without --quiet, once on a pseudo-terminal (progress bars and
rich tables on) and once piped (no bars, 130-column tables). Each must exit 0, print its table
with units, and write its results."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, base_dict

RUN = [sys.executable, str(ROOT / "run.py")]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # CI hides progress bars
    env["COLUMNS"] = "150"
    return env


def on_terminal(args: list[str], cwd: Path, timeout_s: float = 240.0) -> tuple[int, str]:
    """Run under a pseudo-terminal; returns (exit status, everything it printed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*RUN, *args], stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=_env(),
                            close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout_s)
            if not ready:
                proc.kill()
                raise AssertionError(f"no output for {timeout_s} s: {args}")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=timeout_s), b"".join(chunks).decode("utf-8", "replace")


def piped(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *args], capture_output=True, text=True, cwd=cwd, env=_env(), timeout=240)


def both(args: list[str], cwd: Path, needles: list[str]) -> None:
    code, screen = on_terminal(args, cwd)
    assert code == 0, screen
    assert "Traceback" not in screen, screen
    for n in needles:
        assert n in screen, (n, screen)
    r = piped(args, cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "\x1b[" not in r.stdout, "escape codes in piped output"
    for n in needles:
        assert n in r.stdout, (n, r.stdout)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_run_on_terminal_and_piped(tmp_path):
    p = write_yaml(tmp_path / "s.yaml", base_dict(duration_s=30.0, warmup_s=5.0))
    both([str(p)], tmp_path, ["TTFT p50 / p90 / p99", "$/M tokens", "tokens/s/GPU", "results:"])
    assert len(list((tmp_path / "results" / "t").iterdir())) == 2


def test_sweep_on_terminal_and_piped(tmp_path):
    d = base_dict(duration_s=15.0)
    d["sweep"] = {"axes": {"workload.arrivals.rate_per_s": [2, 6]}, "replications": 2}
    p = write_yaml(tmp_path / "sw.yaml", d)
    both(["sweep", str(p), "--workers", "1", "--out", "o"], tmp_path,
         ["mean ± 95% CI", "TTFT p99 (s)", "$/M out tok", "results: o"])
    for f in ("sweep.csv", "aggregate.csv", "pareto.csv", "pareto.png"):
        assert (tmp_path / "o" / f).is_file(), f


def test_plan_on_terminal_and_piped(tmp_path):
    d = base_dict(duration_s=20.0)
    d["plan"] = {"candidates": [{}, {"serving.batching.max_num_seqs": 8}], "replications": 1, "max_replicas": 4}
    p = write_yaml(tmp_path / "pl.yaml", d)
    both(["plan", str(p), "--workers", "1"], tmp_path, ["fewest replicas", "$/M out tok", "stopping rules",
                                                         "results:"])
    assert len(list((tmp_path / "results" / "t").glob("plan-*"))) == 2


def test_calibrate_on_terminal_and_piped(tmp_path):
    rows = ["kind,model,gpu,tp,weights,kv_cache,compute,decode_seqs,context_tokens,prefill_tokens,step_time_s"]
    for b, c, pf, t in [(1, 1000, 0, 0.0082), (32, 1000, 0, 0.0101), (128, 2000, 0, 0.0215), (0, 0, 4096, 0.031),
                        (64, 1000, 1024, 0.019)]:
        rows.append(f"step,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,{b},{c},{pf},{t}")
    csv = tmp_path / "m.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    both(["calibrate", str(csv), "--params", "hbm_bw_efficiency,iteration_overhead_s"], tmp_path,
         ["calibration: 5 measurements", "hbm_bw_efficiency =", "profile:"])
    assert len(list((tmp_path / "results" / "calibration").glob("profile-*.yaml"))) == 2


@pytest.mark.parametrize("cmd", ["run", "sweep", "plan", "calibrate"])
def test_help_on_terminal(cmd, tmp_path):
    code, screen = on_terminal([cmd, "--help"], tmp_path)
    assert code == 0 and "usage:" in screen
