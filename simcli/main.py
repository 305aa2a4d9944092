"""`python run.py` / `token-factory`: dispatch to the run, sweep and plan commands.

    run.py SCENARIO.yaml [...]           same as `run.py run SCENARIO.yaml`
    run.py sweep SWEEP.yaml [...]        grid of points x replications, resumable
    run.py plan SCENARIO.yaml [...]      smallest/cheapest deployment, or highest load, within the SLO
    run.py calibrate MEASUREMENTS.csv    fit step-time parameters; write a perf profile
    run.py report RESULTS_DIR            report.html + report.md of a run's results folder

Bad input (files, flags) prints one message per problem and exits with status 2; a simulation that
a command depends on failing (a plan's evaluation) prints which and why, and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys

from sim.errors import InputError, SimulationFailed
from simcli import calibrate_cmd, plan_cmd, report_cmd, run_cmd, sweep_cmd

COMMANDS = ("run", "sweep", "plan", "calibrate", "report")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description="Simulate LLM inference deployments and their cost.")
    sub = p.add_subparsers(dest="command", required=True)
    run_cmd.add_parser(sub)
    sweep_cmd.add_parser(sub)
    plan_cmd.add_parser(sub)
    calibrate_cmd.add_parser(sub)
    report_cmd.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SimulationFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished work is kept, nothing is half-written", file=sys.stderr)
        return 130
