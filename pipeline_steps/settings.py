"""One base for the methods' settings dataclasses (PEFT-style ``XConfig``).

A subclass is a plain ``@dataclass``; ``from_dict`` refuses keys it does not know
(naming them and the settings' ``what``) and calls ``check`` for value rules.

Its ``schema`` names the section(s) of ``workflow/schemas/config.schema.yaml`` that write the same
settings, with every intended difference spelled out (:class:`SchemaSection`);
``tests/test_settings_schema.py`` proves names, defaults, enums and bounds equal otherwise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping


@dataclass(frozen=True)
class SchemaSection:
    """Where a settings class's fields are written in the config schema, and how they may differ.

    ``path``: schema keys from the root (``$ref`` followed), e.g. ``("$defs", "dynsan_model")``.
    The other mappings carry the reason of each difference (read by the comparison test)."""
    path: tuple[str, ...]
    renamed: Mapping[str, str] = field(default_factory=dict)     # field -> its key in the section
    fields_only: Mapping[str, str] = field(default_factory=dict)  # field -> why the section has no key
    keys_only: Mapping[str, str] = field(default_factory=dict)    # section key -> why no field
    defaults: Mapping[str, str] = field(default_factory=dict)     # field -> why the defaults differ
    schema_only_bounds: Mapping[str, str] = field(default_factory=dict)  # "field keyword" -> why check() allows it


# the reason of an upper bound that only the schema enforces
SCHEMA_CAP = "an upper cap of the config against typos (lr 1e30 for 1e-3, ...); code that builds the settings may go beyond"


class Settings:
    what: str = "settings"  # named in errors: "unknown <what> settings [...]"
    schema: tuple[SchemaSection, ...] = ()  # the schema sections of these settings (none: not configurable)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.what} settings {sorted(unknown)}")
        obj = cls(**d)
        obj.check()
        return obj

    def check(self) -> None:
        """Value rules beyond the types (raise ValueError); none by default."""

    def at_least(self, bound, *names: str) -> None:
        """ValueError naming the first of ``names`` whose value (``None`` passes) is below ``bound``."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value < bound:
                raise ValueError(f"{name} must be >= {bound}, got {value}")

    def above(self, bound, *names: str) -> None:
        """ValueError naming the first of ``names`` whose value (``None`` passes) is not above ``bound``."""
        for name in names:
            value = getattr(self, name)
            if value is not None and not value > bound:
                raise ValueError(f"{name} must be > {bound}, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
