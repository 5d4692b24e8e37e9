"""The one exception type users see: a message that says what to fix."""


class UserError(Exception):
    """Bad input (config, data, model): shown to the user without a traceback."""
