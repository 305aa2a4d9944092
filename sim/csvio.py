"""The one CSV reader for user files (traces, length columns, step tables, measurements).

pandas, given a data row with one field more than the header, silently makes the first column the
index (or, with ``index_col=False``, drops the extra field with only a warning), so every value
in the row shifts or vanishes. Here the header is read as a data row, so the parser sizes rows by
it and refuses any longer row, naming its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from sim.errors import InputError, one_line


def read_csv(path: str | Path, what: str, **kwargs: Any) -> pd.DataFrame:
    """A CSV file's rows as strings under its header's column names; InputError (naming `what`)
    on anything unreadable or a row longer than the header."""
    try:
        raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, **kwargs)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the {what} file is empty") from None
    except Exception as err:  # pandas raises many parser error types
        raise InputError(f"{path}: cannot read {what}: {one_line(err)}") from None
    header = [str(c).strip() for c in raw.iloc[0]]
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise InputError(f"{path}: the {what} header names column(s) {twice} more than once")
    df = raw.iloc[1:].reset_index(drop=True)
    df.columns = header
    return df
