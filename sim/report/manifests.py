"""What a report reads from a sweep's or a plan's folder, validated: sweep.json, plan.json and the
columns of their tables.

A results folder is input like any other: it may have been edited, copied half-way or written by
an older version. Each manifest is checked by a pydantic model (unknown keys are kept out, not
refused: manifests carry more than the report needs), and a folder that does not hold together (a
plan's candidate numbered beyond its list of overrides, a cheapest candidate that is not one of
them, a table without a column the report reads) is an InputError naming the file, the field and
the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    model_validator,
)

from sim.errors import InputError
from sim.scenario import format_validation_error
from sim.sweep import SweepSpec


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=True)

    name: str | None = None
    source: str | None = None
    base: dict[str, Any] | None = Field(default=None, description="the scenario as read, before the study's overrides")
    base_dir: str | None = Field(default=None, description="the folder the scenario's relative paths are read from")


class SweepManifest(_Manifest):
    """sweep.json."""

    spec: SweepSpec


class PlanCandidate(BaseModel):
    """One row of plan.json's `candidates` (plan.csv)."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=True)

    candidate: NonNegativeInt
    overrides: str = ""
    feasible: bool = False
    min_replicas: float | None = None
    max_load: float | None = None
    replicas: PositiveInt | None = None


class PlanManifest(_Manifest):
    """plan.json."""

    mode: Literal["min_replicas", "max_load"]
    load_knob: str
    load_unit: str = ""
    load: float | None = None
    replications: PositiveInt = 1
    cheapest_candidate: NonNegativeInt | None = None
    candidates: list[PlanCandidate] = Field(min_length=1)
    candidate_overrides: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PlanManifest:
        numbers = [c.candidate for c in self.candidates]
        if numbers != list(range(len(numbers))):
            raise ValueError(f"candidates: expected candidates numbered 0 to {len(numbers) - 1} in order, got {numbers}")
        if self.candidate_overrides is not None and len(self.candidate_overrides) != len(numbers):
            raise ValueError(f"candidate_overrides: {len(self.candidate_overrides)} entries for {len(numbers)} candidates")
        if self.cheapest_candidate is not None and self.cheapest_candidate not in numbers:
            raise ValueError(f"cheapest_candidate: {self.cheapest_candidate} is not one of the candidates {numbers}")
        if self.mode == "min_replicas" and self.load is None:
            raise ValueError("load: a plan of the fewest replicas records the load it planned for; got none")
        return self


M = TypeVar("M", bound=_Manifest)


def read_manifest(model: type[M], data: dict[str, Any], path: Path) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise InputError(format_validation_error(err, str(path))) from None


def require_columns(table: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"{path}: no column {', '.join(missing)}: not a table this version writes (copied half-way, "
                         "or from another version?); run the command again")
