"""Project-wide error type for mistakes a user can fix, and the one way a CLI prints it.

Library code raises `UserError("what is wrong; what to do")`. Every CLI declares its click command or group with
`cls=Command` / `cls=Group` from here, so that a UserError raised anywhere below becomes click's one-line
`Error: ...` (exit status 1) instead of a traceback. Tracebacks are for bugs.
"""

from __future__ import annotations

import click


class UserError(ValueError):
    """A problem with the user's input; the CLIs print its message as one line instead of a traceback."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's text (whole, never cut mid-sentence), else its type name.

    For messages that say what is wrong in the project's words and then quote the library's reason.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class _OneLineUserErrors:
    """Click mixin: re-raises a UserError from the command (or any subcommand) as click.ClickException."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except UserError as e:
            raise click.ClickException(str(e)) from None


class Command(_OneLineUserErrors, click.Command):
    """click.Command whose UserErrors print as one line: `@click.command(cls=Command)`."""


class Group(_OneLineUserErrors, click.Group):
    """click.Group whose UserErrors (in any subcommand) print as one line: `@click.group(cls=Group)`."""
