"""Writing results atomically, and printing for people.

Every file is written to a temporary name in its destination folder and renamed into place
(``os.replace`` is atomic on POSIX), so a crash never leaves a half-written file; a whole run folder
is assembled in a temporary folder and renamed into place the same way.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from sim.errors import InputError, one_line
from sim.report import REPRESENTATIVE_DIR
from sim.sensitivity import TABLE_CSV as SENSITIVITY_CSV
from sim.sensitivity import TABLE_FILE as SENSITIVITY_TABLE


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


#: Every result folder this program writes holds this file: the command that wrote it, and a
#: token unique to that result (so a folder is recognised as the very one found earlier).
MARKER = ".token-factory-result"
#: A name's limit: 255 bytes less room for the temporary and suffixed names built from it.
MAX_NAME_BYTES = 200

#: What each command writes into its result folder. A folder is that command's earlier result
#: only if it holds nothing else (so a file a user added keeps the folder from being replaced),
#: and its marker; written by a release from before the marker, it must hold every one of these
#: files, as regular files, and nothing else.
RESULT_FILES: dict[str, frozenset[str]] = {
    "run": frozenset({"scenario.resolved.yaml", "run.json", "summary.json", "requests.parquet", "iterations.parquet",
                      "levels.parquet", "replicas.parquet"}),
    "plan": frozenset({"plan.csv", "plan.parquet", "evaluations.csv", "evaluations.parquet", "plan.json"}),
    "sweep": frozenset({"sweep.json", "points", "sweep.parquet", "sweep.csv", "aggregate.parquet", "aggregate.csv",
                        "pareto.parquet", "pareto.csv", "pareto.png"}),
}

#: What `run.py report` adds to a result folder (run, sweep and plan write them themselves unless
#: --no-report): the pages, their figures, a run's sensitivity table and, in a sweep's or plan's
#: folder, the recommended configuration's run.
REPORT_HTML, REPORT_MD, REPORT_FIGURE_DIR = "report.html", "report.md", "report_figures"
REPORT_FILES = frozenset({REPORT_HTML, REPORT_MD, REPORT_FIGURE_DIR, SENSITIVITY_TABLE, SENSITIVITY_CSV})
STUDY_REPORT_FILES = REPORT_FILES | {REPRESENTATIVE_DIR}

#: A result folder's identity: its marker's token (or, for a folder from before the marker, its
#: device and inode), what `--out` found before the work, so that at the end only that folder is
#: replaced, not one a concurrent run put there meanwhile.
FolderId = tuple[str, int, int]


def is_result_dir(folder: Path, kind: str) -> bool:
    """Whether `folder` is an earlier `kind` result of this program, holding nothing else."""
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return False
    if not names or not names <= RESULT_FILES[kind] | {MARKER} | (REPORT_FILES if kind == "run" else STUDY_REPORT_FILES):
        return False
    if MARKER in names:
        return _marker(folder)[0] == kind
    if kind == "sweep":
        return _is_sweep_manifest(folder / "sweep.json")
    return names == RESULT_FILES[kind] and all((folder / n).is_file() and not (folder / n).is_symlink() for n in names)


def _is_sweep_manifest(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("digest"), str) and "spec" in data


def _marker(folder: Path) -> tuple[str | None, str]:
    """(command, token) of a folder's marker; (None, "") without one."""
    try:
        lines = (folder / MARKER).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None, ""
    return (lines[0] if lines else None), (lines[1] if len(lines) > 1 else "")


def _folder_id(path: Path) -> FolderId | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return (_marker(path)[1], st.st_dev, st.st_ino)


def check_out_dir(path: Path, kind: str, *, given: bool = True, replaced_whole: bool = True,
                  named: str | None = None) -> FolderId | None:
    """Refuse, before any work, an output folder this command may not write: one that holds the
    current folder, a symbolic link, a file, a folder holding anything but an earlier `kind`
    result of this program, a name too long, or a place that cannot be written. Returns the
    identity of the earlier result that may be replaced (None when there is none). `given`: the
    user named the path (--out); otherwise it is a default results folder, which is never
    replaced (a concurrent run may have just written it). `replaced_whole`: the new result is built
    beside the folder and renamed into place (atomic_dir), so the parent must be writable too;
    a sweep writes inside its folder instead. `named`: how messages name the folder, when neither
    --out nor a default folder (the report's representative/)."""
    flag = named or (f"--out {path}" if given else f"results folder {path}")
    new_folder = "move it away and run the command again" if named else "name a new folder for the results"
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as err:
        raise InputError(f"{flag}: cannot resolve the path: {err}") from None
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise InputError(f"{flag}: is the current folder or one of its parents; name a new folder for the results")
    for part in resolved.parts:
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise InputError(f"{flag}: a path component is longer than {MAX_NAME_BYTES} bytes")
    if path.is_symlink():
        raise InputError(f"{flag}: is a symbolic link; " + ("move it away and run the command again" if named
                                                             else "name the folder itself"))
    if not path.exists():
        check_writable(nearest_existing(path.parent), flag)
        return None
    if not path.is_dir():
        raise InputError(f"{flag}: exists and is not a folder; {new_folder}")
    if any(path.iterdir()) and not is_result_dir(path, kind):
        raise InputError(f"{flag}: exists and holds files that are not {kind} results of this program; "
                         f"it is left untouched: {'move it away' if named else 'name a new folder'}, or remove it yourself")
    check_writable(path, flag)
    if replaced_whole:
        check_writable(resolved.parent, flag)
    return _folder_id(path) if given else None     # a default folder is never replaced, only a named one


def check_out_file(path: Path, what: str) -> None:
    """Refuse, before any work, an output file that is a folder or cannot be written."""
    flag = f"--out {path}"
    if path.is_dir():
        raise InputError(f"{flag}: is a folder; name the {what} file to write")
    if path.exists() and not path.is_file():
        raise InputError(f"{flag}: exists and is not a regular file")
    if len(path.name.encode("utf-8")) > MAX_NAME_BYTES:
        raise InputError(f"{flag}: the file name is longer than {MAX_NAME_BYTES} bytes")
    check_writable(nearest_existing(path.parent), flag)


def nearest_existing(path: Path) -> Path:
    p = path if str(path) else Path(".")
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(folder: Path, flag: str) -> None:
    if not folder.is_dir():
        raise InputError(f"{flag}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{flag}: cannot write in {folder} (permission denied)")
    # Permission bits are not the whole story (root in /proc, read-only mounts, full disks): try.
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(f"{flag}: cannot write in {folder} ({err.strerror or one_line(err)})") from None


class ResultDir:
    """Where a result folder is assembled (`tmp`) and where it ended up (`path`, set on success)."""

    def __init__(self, tmp: Path, path: Path) -> None:
        self.tmp, self.path = tmp, path


@contextmanager
def atomic_dir(out_dir: Path, kind: str, *, replace: FolderId | None = None) -> Iterator[ResultDir]:
    """Assemble a result folder in a temporary folder beside `out_dir` and rename it into place.

    Never deletes what this program did not write. `replace` is the identity `check_out_dir`
    returned for an earlier `kind` result in `out_dir`: that folder, if it is still there and still
    only that, is replaced. Otherwise the results go to `out_dir`, or if it is taken by then (a
    concurrent run, a user's files) to `out_dir-1`, `out_dir-2`, ... The rename is what claims the
    name (a folder cannot be renamed onto a non-empty one), so runs finishing at the same moment
    never share a folder. `ResultDir.path` says where the results went."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)
    res = ResultDir(tmp, out_dir)
    try:
        yield res
        (tmp / MARKER).write_text(f"{kind}\n{uuid.uuid4().hex}\n", encoding="utf-8")
        if replace is not None and _folder_id(out_dir) == replace and is_result_dir(out_dir, kind) \
                and _replace(tmp, out_dir, replace):
            return
        res.path = _claim(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, out_dir: Path, expected: FolderId) -> bool:
    """Swap the earlier result in `out_dir` (identified by `expected`) for `tmp`. False, with
    `out_dir` as it was, when what was there is not that result by the time it is moved (a
    concurrent run replaced it first) or the new result cannot take its place; the old result is
    deleted only once the new one is in place."""
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    moved = old / "old"
    try:
        out_dir.rename(moved)
    except OSError:
        old.rmdir()
        return False
    if _folder_id(moved) != expected:       # not the result found before the work (a rename keeps the inode)
        _put_back(moved, out_dir, old)
        return False
    try:
        tmp.rename(out_dir)
    except BaseException:
        _put_back(moved, out_dir, old)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return True


def _put_back(moved: Path, out_dir: Path, old: Path) -> None:
    """Return a folder moved aside to its place; if the place was taken meanwhile, leave it where
    it is (a hidden `.NAME.old-*` folder beside it) rather than delete it."""
    try:
        moved.rename(out_dir)
        old.rmdir()
    except OSError:
        pass


def _free_names(path: Path, *, file: bool) -> Iterator[Path]:
    """`path`, then `NAME-1`, `NAME-2`, ... beside it (files keep their suffix: `stem-1.yaml`)."""
    yield path
    for i in range(1, 10_000):
        yield path.with_name(f"{path.stem}-{i}{path.suffix}" if file else f"{path.name}-{i}")
    raise InputError(f"{path}: no free name beside it")


def _claim(tmp: Path, out_dir: Path) -> Path:
    """Rename `tmp` to `out_dir`, or to the first free `out_dir-N`."""
    for cand in _free_names(out_dir, file=False):
        try:
            tmp.rename(cand)            # fails if cand is a file or a non-empty folder
            return cand
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            continue
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue
            raise
    raise AssertionError("unreachable: _free_names raises when it runs out")


def write_new_text(path: Path, text: str) -> Path:
    """Write `text` to a new file at `path`, or at the first free `stem-N.suffix` beside it;
    returns the path written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        for cand in _free_names(path, file=True):
            try:
                os.link(tmp, cand)      # a hard link never replaces an existing name
            except FileExistsError:
                continue
            return cand
        raise AssertionError("unreachable: _free_names raises when it runs out")
    finally:
        Path(tmp).unlink(missing_ok=True)


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
