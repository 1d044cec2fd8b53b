"""Each option of a ``loadonce`` command is given once on its command line.

click keeps the last of ``--workers 2 --workers 3`` and says nothing: a script that adds an
option to a command line that already has it serves with a value its reader may not expect
(which of the two counts is a guess). A config file's key given twice is refused (TOML
says so); so is an option given twice, as a usage error naming it (exit status 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import click


def _repeated_option(command: click.Command, args: Sequence[str]) -> tuple[str, str] | None:
    """The first option given twice in ``args``, as typed each time (a flag's two spellings,
    ``--tracing``/``--no-tracing``, are one option); None if there is none.
    An option's value is skipped (``--name --workers`` names a model "--workers"), and
    nothing after ``--`` is an option."""
    options: dict[str, click.Option] = {}
    for parameter in command.params:
        if isinstance(parameter, click.Option) and not (parameter.multiple or parameter.count):
            for spelling in (*parameter.opts, *parameter.secondary_opts):
                options[spelling] = parameter
    given: dict[str, str] = {}
    index = 0
    while index < len(args):
        typed = args[index]
        index += 1
        if typed == "--":
            return None
        spelling, has_value, _ = typed.partition("=")
        option = options.get(spelling)
        if option is None:
            continue
        key = option.name or spelling
        if key in given:
            return given[key], spelling
        given[key] = spelling
        if not option.is_flag and not has_value:
            index += option.nargs  # its value, whatever it looks like
    return None


class OnceEachCommand(click.Command):
    """A command whose options may each be given once (``_repeated_option``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        repeated = _repeated_option(self, args)
        if repeated is not None:
            first, then = repeated
            said = (
                f"option '{first}' is given more than once"
                if first == then
                else f"options '{first}' and '{then}' are both given"
            )
            raise click.UsageError(f"{said}; give one (the last would win unsaid)", ctx)
        return super().parse_args(ctx, args)


class OnceEachGroup(click.Group):
    """A group whose commands are ``OnceEachCommand``."""

    command_class = OnceEachCommand
