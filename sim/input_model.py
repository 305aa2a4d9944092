"""The base of every model that validates user input (scenarios, catalogs, perf, sweep, plan).

What pydantic's lax mode would let through and a scenario file must not:
* unknown keys (``extra="forbid"``), so a typo never passes silently;
* ``.inf`` and ``.nan`` in any number (``allow_inf_nan=False``): no quantity in a scenario is
  infinite, and an infinite duration, rate or price only crashes later or prints ``inf``;
* booleans where a number is expected (YAML ``true`` would otherwise read as 1), and numbers or
  strings where a boolean is expected (``chunked_prefill: 0``, ``repeat: "no"``).
Upper bounds that keep a simulation finite are set field by field, with the limit in the message.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _is_numeric(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_numeric(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _is_numeric(typing.get_args(annotation)[0])
    return False


class InputModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, data: Any) -> Any:
        # A model validator, not a field one: pydantic forbids "before" validators on the
        # discriminator fields ("kind") that a field validator on "*" would include.
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                v = data.get(name)
                if isinstance(v, bool) and _is_numeric(field.annotation):
                    raise ValueError(f"{name}: expected a number, got {str(v).lower()}")
                if field.annotation is bool and v is not None and not isinstance(v, bool):
                    raise ValueError(f"{name}: expected true or false, got {v!r}")
        return data
