"""One base for the methods' settings dataclasses (PEFT-style ``XConfig``).

A subclass is a plain ``@dataclass``; ``from_dict`` refuses keys it does not know
(naming them and the settings' ``what``) and calls ``check`` for value rules.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any


class Settings:
    what: str = "settings"  # named in errors: "unknown <what> settings [...]"

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
