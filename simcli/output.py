"""Writing results atomically, and printing for people.

Every file is written to a temporary name in its destination folder and renamed into place
(``os.replace`` is atomic on POSIX), so a crash never leaves a half-written file; a whole run folder
is assembled in a temporary folder and renamed into place the same way.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


def jsonable(v: Any) -> Any:
    """JSON-safe scalars: numpy -> Python, NaN -> null, inf -> "inf"."""
    if hasattr(v, "item") and not isinstance(v, str | bytes):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    return v


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, else delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(jsonable(data), indent=2))


def write_table(df: pd.DataFrame, path_stem: Path) -> None:
    """`stem.parquet` and `stem.csv`, each atomically."""
    with atomic_path(path_stem.with_suffix(".parquet")) as tmp:
        df.to_parquet(tmp, index=False)
    with atomic_path(path_stem.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)


def save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=120, bbox_inches="tight")


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `out_dir` whole."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_console():
    """A rich console: the terminal's width, or 130 columns when written to a pipe or file
    (rich would assume 80 and wrap the tables)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=130)


def show_progress(quiet: bool) -> bool:
    """Progress bars only on a terminal, never in CI or with --quiet."""
    return not quiet and sys.stdout.isatty() and not os.environ.get("CI")


def fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if v is None or not math.isfinite(v):
        return "n/a" if v is None or math.isnan(v) else str(v)
    return f"{v:,.{digits}f}" if abs(v) < 1000 else f"{v:,.0f}"
