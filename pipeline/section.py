"""The base of every config section, and of every registered class whose fields are settings
(a model's parameters, a split protocol's): unknown keys are errors, numbers given for text are
text. ``validate_section`` validates a section whose class is known only once the config names
it (``model.<name>``), keeping each error under its full dotted key; ``validation_errors``
reports keys a validator finds wrong the same way."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


S = TypeVar("S", bound=BaseModel)


def validate_section(cls: type[S], value: Any, *loc: str | int) -> S:
    """``cls.model_validate(value)`` for use inside a validator of the enclosing section: its
    errors come out at ``<enclosing key>.<loc>.<their own key>`` (pydantic prefixes the
    enclosing key of errors raised in a validator; this adds ``loc``)."""
    try:
        return cls.model_validate(value)
    except ValidationError as e:
        errors = [{"type": PydanticCustomError(d["type"], d["msg"]), "loc": (*loc, *d["loc"]), "input": d.get("input")}
                  for d in e.errors()]
        raise ValidationError.from_exception_data(e.title, errors) from None


def validation_errors(errors: list[dict[str, Any]]) -> ValidationError:
    """A ``ValidationError`` of pydantic line errors (``type``, ``loc``, ``input``) for a
    validator to raise, so each is reported under its own dotted key."""
    return ValidationError.from_exception_data("config", errors)
