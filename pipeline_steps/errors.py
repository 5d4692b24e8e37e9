"""The one exception type users see: a message that says what to fix."""


class UserError(Exception):
    """Bad input (config, data, model): shown to the user without a traceback."""


def shown(value, limit: int = 60) -> str:
    """A value for a one-line message: repr, newlines escaped, long values cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def unknown_name(where: str, kind: str, name: str, defined, hint: str = "") -> UserError:
    """The one "unknown X" message: ``{where}: unknown {kind} '{name}'; defined {kind}s: a, b`` (``hint`` when
    none is defined)."""
    listed = ", ".join(sorted(defined)) or hint or "(none)"
    return UserError(f"{where}: unknown {kind} '{name}'; defined {kind}s: {listed}")
