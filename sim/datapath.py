"""Paths to user data files named in scenario files (traces, step tables, profiles).

``bundled:NAME`` is a file shipped in sim/data/traces; a relative path is relative to the folder of
the scenario file that names it (passed as ``base_dir`` in the validation context); the file must
exist when the scenario is validated, so a typo fails before any simulation starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo

BUNDLED_PREFIX = "bundled:"


def resolve_data_path(value: str, info: ValidationInfo | None) -> str:
    """The absolute path of a user data file; ValueError (a field error) if it does not exist."""
    if value.startswith(BUNDLED_PREFIX):
        path = Path(__file__).parent / "data" / "traces" / value[len(BUNDLED_PREFIX):]
    else:
        path = Path(value).expanduser()
        base = (info.context or {}).get("base_dir") if info is not None else None
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
    if not path.is_file():
        raise ValueError(f"file not found: {value!r} (looked at {path})")
    return str(path.resolve())


#: A path to a data file, resolved against the scenario's folder (or `bundled:`) and checked.
DataPath = Annotated[str, AfterValidator(resolve_data_path)]
