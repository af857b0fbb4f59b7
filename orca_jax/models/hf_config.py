"""A dataclass config's fields from a Hugging Face `config.json`, checked, so that a damaged or foreign config fails
naming the field instead of later, inside the model, with a shape or type error that names nothing."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Collection


def _fits(value, hint) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is tuple:  # int or sequence of ints (pairs, per-stage lists)
        items = value if isinstance(value, (list, tuple)) else [value]
        return all(_fits(v, int) for v in items)
    raise TypeError(f"no check for fields of type {hint}")  # a new field type: add its check


def fields_from_hf(cls, config: dict, *, exclude: Collection[str] = ()) -> dict:
    """The values `config` gives for `cls`'s fields (null or absent: the field's default); raises ValueError listing
    every required field that is missing and every value of the wrong type."""
    hints = typing.get_type_hints(cls)
    values, problems = {}, []
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        value = config.get(field.name)
        if value is None:
            if field.default is dataclasses.MISSING:
                problems.append(f"{field.name} is missing")
        elif not _fits(value, hints[field.name]):
            expected = getattr(hints[field.name], "__name__", hints[field.name])
            problems.append(f"{field.name}={value!r} is not of type {expected}")
        else:
            values[field.name] = value
    if problems:
        raise ValueError(f"the config does not describe a {cls.__name__}: {'; '.join(problems)}.")
    return values
