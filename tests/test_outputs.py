"""Output folders and files: never delete or replace what this program did not write, never let
two runs share a folder, refuse a bad --out before the work starts, and read back stored sweep
points only when they really are the point (hostile-inputs report, D1-D4, C6, C7, W11)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, base_dict
from test_sweep import args_for, sweep_file

from simcli.main import main
from simcli.output import MARKER, atomic_dir, write_new_text
from simcli.sweep_cmd import cmd_sweep

CAL_ROW = ("id,kind,model,gpu,tp,weights,kv_cache,compute,decode_seqs,context_tokens,prefill_tokens,step_time_s,"
           "input_tokens,output_tokens,requests,output_tok_per_s_per_gpu\n"
           "a,step,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,64,1000,0,0.012,,,,\n")


@pytest.fixture
def scenario(tmp_path, monkeypatch):
    """A short scenario file; the current folder is tmp_path."""
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(base_dict(duration_s=5.0)), encoding="utf-8")
    return p


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_out_naming_a_folder_of_other_files_is_refused_and_left_untouched(scenario, tmp_path, capsys):
    data = tmp_path / "mydata"
    (data / "sub").mkdir(parents=True)
    (data / "thesis.txt").write_text("precious")
    (data / "sub" / "y").write_text("x")
    before = listing(tmp_path)
    assert main([str(scenario), "--quiet", "--out", "mydata"]) == 2
    err = capsys.readouterr().err
    assert "--out mydata" in err and "left untouched" in err and err.count("\n") == 1
    assert listing(tmp_path) == before and (data / "thesis.txt").read_text() == "precious"


def test_out_naming_a_file_is_refused(scenario, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("important notes")
    before = listing(tmp_path)
    for cmd in (["run", str(scenario)], ["plan", str(scenario), "--workers", "1"]):
        assert main([*cmd, "--quiet", "--out", "notes.txt"]) == 2
        assert "is not a folder" in capsys.readouterr().err
    assert listing(tmp_path) == before and (tmp_path / "notes.txt").read_text() == "important notes"


@pytest.mark.parametrize("out", [".", "..", "PARENT", "/"])
def test_out_the_current_folder_or_a_parent_is_refused(scenario, tmp_path, capsys, out):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    os.chdir(work)
    out = str(tmp_path / "a") if out == "PARENT" else out
    assert main([str(scenario), "--quiet", "--out", out]) == 2
    assert "current folder" in capsys.readouterr().err
    assert work.is_dir() and listing(tmp_path / "a") == ["b"]


def test_out_an_earlier_run_is_replaced_and_nothing_else_is(scenario, tmp_path, capsys):
    assert main([str(scenario), "--quiet", "--out", "r"]) == 0
    assert (tmp_path / "r" / MARKER).read_text().split()[0] == "run"
    assert main([str(scenario), "--quiet", "--out", "r", "--seed", "9"]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "s.yaml"]        # no leftovers
    # A plan's folder is not a run's: refused, kept.
    assert main(["plan", str(scenario), "--quiet", "--workers", "1", "--out", "p"]) == 0
    before = listing(tmp_path / "p")
    capsys.readouterr()
    assert main([str(scenario), "--quiet", "--out", "p"]) == 2
    assert "not run results" in capsys.readouterr().err and listing(tmp_path / "p") == before


def test_bad_output_places_are_refused_before_simulating(scenario, tmp_path, capsys):
    long_name = "a" * 300
    assert main([str(scenario), "--quiet", "--out", long_name]) == 2
    assert "longer than 200 bytes" in capsys.readouterr().err
    (tmp_path / "f").write_text("")
    assert main([str(scenario), "--quiet", "--out", "f/x"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    for name in ("..", ".", "a" * 101, ".hidden"):
        assert main([str(scenario), "--quiet", "--set", f"name={name}"]) == 2
        assert "name" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_output_folder_is_refused_before_simulating(scenario, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main([str(scenario), "--quiet", "--out", "ro/x"]) == 2
        assert "permission denied" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


def test_two_results_for_one_folder_name_both_survive(tmp_path):
    """The collision of two runs finishing in the same second, made certain: the second rename
    finds the name taken and takes the next one."""
    target = tmp_path / "results" / "t" / "20261130T090218Z-seed1"
    for text in ("first", "second"):
        with atomic_dir(target, "run", replace=None) as res:
            (res.tmp / "summary.json").write_text(text)
    assert (target / "summary.json").read_text() == "first"
    assert (target.with_name(target.name + "-1") / "summary.json").read_text() == "second"
    # The same for calibration profiles.
    prof = tmp_path / "results" / "calibration" / "profile-20261130T091141Z.yaml"
    assert write_new_text(prof, "a") == prof
    assert write_new_text(prof, "b") == prof.with_name("profile-20261130T091141Z-1.yaml")
    assert prof.read_text() == "a" and sorted(p.name for p in prof.parent.iterdir()) == [
        "profile-20261130T091141Z-1.yaml", "profile-20261130T091141Z.yaml"]


def test_parallel_runs_of_one_scenario_keep_every_result(scenario, tmp_path):
    """Four runs of the same scenario and seed at once, as a shell loop would start them: four
    folders, each with its own SLO."""
    env = {**os.environ, "CI": "1"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run.py"), str(scenario), "--quiet",
                               "--set", f"slo.ttft_s={ttft}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for ttft in (1, 2, 3, 4)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.strip())
    assert len(set(outs)) == 4
    ttfts = sorted(yaml.safe_load((tmp_path / o / "scenario.resolved.yaml").read_text())["slo"]["ttft_s"]
                   for o in outs)
    assert ttfts == [1, 2, 3, 4]


def test_calibrate_out_replaces_only_its_own_profiles(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text(CAL_ROW)
    (tmp_path / "notes.yaml").write_text("mine: 1\n")
    (tmp_path / "outdir").mkdir()
    assert main(["calibrate", "m.csv", "--quiet", "--out", "notes.yaml"]) == 2
    assert "not a profile written by" in capsys.readouterr().err
    assert (tmp_path / "notes.yaml").read_text() == "mine: 1\n"
    assert main(["calibrate", "m.csv", "--quiet", "--out", "outdir"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["calibrate", "m.csv", "--quiet", "--out", "p.yaml"]) == 0
    assert main(["calibrate", "m.csv", "--quiet", "--out", "p.yaml", "--params", "hbm_bw_efficiency"]) == 0
    assert "hbm_bw_efficiency" in (tmp_path / "p.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "notes.yaml", "outdir", "p.yaml"]


def test_sweep_out_must_be_this_sweeps_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    p = sweep_file(tmp_path, {"axes": {"serving.replicas": [1]}, "replications": 1}, duration_s=5.0)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("k")
    assert main(["sweep", str(p), "--quiet", "--workers", "1", "--out", "afile"]) == 2
    assert main(["sweep", str(p), "--quiet", "--workers", "1", "--out", "other"]) == 2
    assert main(["sweep", str(p), "--quiet", "--workers", "1", "--out", "other", "--fresh"]) == 2
    assert (tmp_path / "afile").read_text() == "x" and listing(tmp_path / "other") == ["keep.txt"]
    assert main(["sweep", str(p), "--quiet", "--workers", "1", "--out", "sw"]) == 0
    assert (tmp_path / "sw" / MARKER).read_text().strip() == "sweep"
    assert main(["sweep", str(p), "--quiet", "--workers", "1", "--out", "sw"]) == 0   # resumes


@pytest.mark.parametrize("content", [
    b'{"error": ""}',                 # valid JSON, but not a full row (D4)
    b"[]",                            # not an object (C7)
    b"\xff\xfe\x00garbage",           # not UTF-8 (C7)
    "OTHER",                          # a complete row of another point
])
def test_a_stored_point_that_is_not_the_point_is_run_again(tmp_path, content):
    p = sweep_file(tmp_path, {"axes": {"workload.arrivals.rate_per_s": [2.0, 4.0]}, "replications": 2},
                   duration_s=10.0)
    out = tmp_path / "out"
    assert cmd_sweep(args_for(p, out)) == 0
    full = {f.name: json.loads(f.read_text()) for f in (out / "points").iterdir()}
    victim, other = sorted(full)[0], sorted(full)[-1]
    if content == "OTHER":
        content = (out / "points" / other).read_bytes()
    (out / "points" / victim).write_bytes(content)
    ran = []
    assert cmd_sweep(args_for(p, out), after_row=ran.append) == 0
    assert len(ran) == 1 and f"{ran[0]['point_id']}-r{ran[0]['replication']}.json" == victim
    again = json.loads((out / "points" / victim).read_text())
    timing = ("wall_s", "sim_requests_per_wall_s")
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in full[victim].items() if k not in timing}
    import pandas as pd

    rows = pd.read_csv(out / "sweep.csv")
    assert len(rows) == 4 and rows["point_id"].notna().all()
    assert (pd.read_csv(out / "aggregate.csv")["replications"] == 2).all()


def test_a_run_folder_from_before_the_marker_is_still_replaceable(scenario, tmp_path, capsys):
    """Results written by a release without the marker hold exactly the run's files: --out may
    replace them; one foreign file among them makes the folder foreign."""
    assert main([str(scenario), "--quiet", "--no-report", "--out", "old"]) == 0   # as such a release wrote it
    (tmp_path / "old" / MARKER).unlink()
    assert main([str(scenario), "--quiet", "--out", "old"]) == 0
    assert (tmp_path / "old" / MARKER).exists()
    (tmp_path / "old" / MARKER).unlink()
    (tmp_path / "old" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([str(scenario), "--quiet", "--out", "old"]) == 2
    assert (tmp_path / "old" / "notes.txt").read_text() == "mine"


def test_files_added_to_an_earlier_run_keep_it_from_being_replaced(scenario, tmp_path, capsys):
    assert main([str(scenario), "--quiet", "--out", "r1"]) == 0
    (tmp_path / "r1" / "analysis.ipynb").write_text("x")
    (tmp_path / "r1" / "plots").mkdir()
    capsys.readouterr()
    assert main([str(scenario), "--quiet", "--out", "r1"]) == 2
    assert "left untouched" in capsys.readouterr().err
    assert (tmp_path / "r1" / "analysis.ipynb").read_text() == "x" and (tmp_path / "r1" / "plots").is_dir()


def test_a_symbolic_link_as_out_is_refused(scenario, tmp_path, capsys):
    assert main([str(scenario), "--quiet", "--out", "real"]) == 0
    (tmp_path / "link").symlink_to(tmp_path / "real")
    capsys.readouterr()
    assert main([str(scenario), "--quiet", "--out", "link"]) == 2
    assert "symbolic link" in capsys.readouterr().err and (tmp_path / "link").is_symlink()


def test_concurrent_runs_into_one_out_keep_both_results(tmp_path, monkeypatch):
    """The races of two runs naming the same --out, made certain by interleaving them by hand:
    (1) the folder is new to both: the first to finish takes it, the other a sibling; (2) both
    found an earlier run there: the first replaces it, and the second, finding a folder that is no
    longer the one it checked, takes a sibling instead of destroying the first's result."""
    from simcli.output import check_out_dir

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r3"

    def finish(prior, text):
        with atomic_dir(out, "run", replace=prior) as res:
            (res.tmp / "summary.json").write_text(text)
        return res.path

    a, b = check_out_dir(out, "run"), check_out_dir(out, "run")
    assert (finish(a, "A"), finish(b, "B")) == (out, out.with_name("r3-1"))
    shutil.rmtree(out.with_name("r3-1"))
    a, b = check_out_dir(out, "run"), check_out_dir(out, "run")      # both see A's result
    assert a is not None and a == b
    assert finish(a, "C") == out and (out / "summary.json").read_text() == "C"
    assert finish(b, "D") == out.with_name("r3-1") and (out / "summary.json").read_text() == "C"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r3", "r3-1"]      # nothing left behind


def test_sweep_fresh_deletes_only_point_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    p = sweep_file(tmp_path, {"axes": {"serving.replicas": [1]}, "replications": 1}, duration_s=5.0)
    (tmp_path / "u3" / "points").mkdir(parents=True)
    (tmp_path / "u3" / "sweep.json").write_text("{}")
    (tmp_path / "u3" / "points" / "mine.csv").write_text("data")
    assert main(["sweep", str(p), "--quiet", "--workers", "1", "--out", "u3", "--fresh"]) == 2
    assert (tmp_path / "u3" / "sweep.json").read_text() == "{}"
    assert (tmp_path / "u3" / "points" / "mine.csv").read_text() == "data"
    assert main(["sweep", str(p), "--quiet", "--workers", "1", "--out", "sw"]) == 0
    (tmp_path / "sw" / "points" / "notes.txt").write_text("n")   # a user's file among the points
    assert main(["sweep", str(p), "--quiet", "--workers", "1", "--out", "sw", "--fresh"]) == 0
    assert (tmp_path / "sw" / "points" / "notes.txt").read_text() == "n"


def test_a_user_folder_named_like_results_is_not_taken_for_one(scenario, tmp_path, capsys):
    """Before the marker, a run folder held all seven of a run's files: one file of the same name
    (a user's own summary.json or plan.csv) does not make a folder a result."""
    for name in ("summary.json", "plan.csv"):
        (tmp_path / "mydata").mkdir(exist_ok=True)
        (tmp_path / "mydata" / name).write_text("mine")
        for cmd in (["run"], ["plan", "--workers", "1"]):
            assert main([cmd[0], str(scenario), *cmd[1:], "--quiet", "--out", "mydata"]) == 2
        assert (tmp_path / "mydata" / name).read_text() == "mine"
    capsys.readouterr()


def test_replacing_never_destroys_a_folder_it_did_not_check(tmp_path):
    """The window between the last check and the rename: if the folder there by then is not the
    one found before the work (another run replaced it), it is put back untouched."""
    from simcli.output import _folder_id, _replace

    out = tmp_path / "r"
    with atomic_dir(out, "run") as res:
        (res.tmp / "summary.json").write_text("A")
    found = _folder_id(out)
    shutil.rmtree(out)
    with atomic_dir(out, "run") as res:                 # another run's result, in its place
        (res.tmp / "summary.json").write_text("B")
    new = tmp_path / "new"
    new.mkdir()
    assert found is not None and _replace(new, out, found) is False
    assert (out / "summary.json").read_text() == "B" and new.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "r"]


def test_a_failure_while_replacing_puts_the_old_result_back(tmp_path, monkeypatch):
    out = tmp_path / "r"
    with atomic_dir(out, "run") as res:
        (res.tmp / "summary.json").write_text("old")
    from simcli.output import _folder_id

    prior = _folder_id(out)
    real_rename = Path.rename

    def failing(self, target):
        if Path(target) == out and self.name.startswith(".r.tmp-"):
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(KeyboardInterrupt), atomic_dir(out, "run", replace=prior) as res:
        (res.tmp / "summary.json").write_text("new")
    assert (out / "summary.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_an_output_place_the_permission_bits_allow_but_the_system_refuses_is_refused_first():
    """Root passes every permission check, yet /proc takes no files: refused before any work."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    if not os.path.isdir("/proc"):
        import pytest
        pytest.skip("no /proc here")
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "calibrate", "--reference", "--out", "/proc/x.yaml"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and "cannot write in /proc" in p.stderr and "Traceback" not in p.stderr
