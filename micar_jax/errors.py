"""The error type for problems the user can fix (printed as one line, no traceback)."""


class UserError(Exception):
  """Bad input, config or environment; main prints `error: <message>` and exits 2."""
