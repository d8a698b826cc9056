"""Project-wide error type for mistakes a user can fix (bad paths, bad options, incompatible files)."""


class UserError(ValueError):
    """A problem with the user's input; the CLIs print its message as one line instead of a traceback."""
