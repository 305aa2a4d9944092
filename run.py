"""Command-line entry point: ``python run.py SCENARIO.yaml`` (see simcli/main.py for commands)."""

import sys

from simcli.main import main

if __name__ == "__main__":
    sys.exit(main())
