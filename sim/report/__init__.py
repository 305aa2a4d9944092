"""Reports a person reads: what was simulated, what it costs and how it behaved, as one HTML page
(images embedded, opens offline) and a Markdown page with its PNGs beside it.

* `content.py` turns a results folder's tables into a `Report`: sections of prose, tables and
  figures, every number formatted for people with its unit;
* `figures.py` draws the figures (matplotlib's object-oriented API, no pyplot, headless);
* `render.py` fills the Jinja2 templates (`templates/`) and encodes the figures as PNG.

Nothing here writes files or prints: the CLI (simcli/report_cmd.py) writes what these return.
"""

from sim.report.figures import pareto_figure

__all__ = ["pareto_figure"]
