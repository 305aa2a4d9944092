"""Reports a person reads: what was simulated, what it costs and how it behaved, as one HTML page
(images embedded, opens offline) and a Markdown page with its PNGs beside it.

* `content.py` turns a results folder's tables into a `Report`: sections of prose, tables and
  figures, every number formatted for people with its unit;
* `figures.py` draws the figures (matplotlib's object-oriented API, no pyplot, headless);
* `study.py` does the same for a sweep's or plan's folder (the recommendation, runners-up,
  latency against load, the frontier, confidence), `sensitivity.py` the section on what moves
  the answer (sim/sensitivity.py computes it);
* `render.py` fills the Jinja2 templates (`templates/`) and encodes the figures as PNG.

Importing this package loads no matplotlib (the modules above do). Nothing here writes files or
prints: the CLI (simcli/report_cmd.py) writes what these return.
"""

#: The folder, inside a sweep's or plan's results, that holds the recommended configuration's run
#: (replication 0 simulated again with every table, for the report's time series and cost).
REPRESENTATIVE_DIR = "representative"
