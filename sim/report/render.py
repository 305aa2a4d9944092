"""A `Report` as text: one self-contained HTML page (figures embedded as PNG data URIs, styles
inline, no external reference, so it opens offline in any browser) and a Markdown page that links
its figures as PNG files beside it. Jinja2 templates in `templates/`, autoescaped for HTML."""

from __future__ import annotations

import base64
import io
import re

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sim.report.content import Report

_ENV = Environment(loader=PackageLoader("sim.report", "templates"), autoescape=select_autoescape(["html", "html.j2"]),
                   trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (Agg canvas: headless, no pyplot state)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def pngs(report: Report) -> dict[str, bytes]:
    """Every figure of the report as PNG bytes, by file name."""
    return {f"{ref.name}.png": figure_png(ref.figure) for ref in report.all_figures()}


def _bold_only(text: str) -> Markup:
    """Prose may carry <b>...</b> for the figures that matter; everything else is escaped."""
    return Markup(re.sub(r"&lt;(/?)b&gt;", r"<\1b>", str(escape(text))))


def _md_escape(text: str) -> str:
    """Markdown viewers render raw HTML: names and descriptions from a scenario go out as text."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md(text: str) -> str:
    return re.sub(r"&lt;(/?)b&gt;", "**", _md_escape(text))


def _cell(value: object) -> str:
    """A Markdown table cell: escaped, one line, its pipes escaped."""
    return " ".join(_md_escape(str(value)).replace("\\", "\\\\").replace("|", "\\|").split())


def render_html(report: Report, images: dict[str, bytes]) -> str:
    data = {name: "data:image/png;base64," + base64.b64encode(png).decode("ascii") for name, png in images.items()}
    return _ENV.get_template("report.html.j2").render(report=report, images=data, prose=_bold_only)


def render_markdown(report: Report, figure_dir: str) -> str:
    """The Markdown page, its figures linked as `figure_dir`/<name>.png beside it."""
    return _ENV.get_template("report.md.j2").render(report=report, figure_dir=figure_dir, md=_md, cell=_cell)
