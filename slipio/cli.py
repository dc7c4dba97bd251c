"""The command-line conventions `slip-etl`, `slip-train` and `slip-eval` share (typer; no etl or trainer imports).

One help layout: a short description with an example, then the options in named sections (each option's
`rich_help_panel`: Config, Input, ..., Output, Run), plain text that never truncates a flag. One error style: a
problem with the user's input is one `PROG: error: ...` line on stderr and exit status 2 (typer's usage errors
included: unknown flag, bad value, missing argument), a failure at run time is exit 1, never a traceback for
either; `--help` exits 0. Config files are YAML or JSON mappings.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Optional

import typer
from typer.core import TyperCommand, TyperGroup

BAD_INPUT = 2
FAILED = 1
HELP_OPTIONS = {"help_option_names": ["--help", "-h"]}
# where the shared sections go in --help; a command's own sections sit between Input and Output
SECTION_ORDER = {"Arguments": 0, "Config": 1, "Input": 2, "Output": 8, "Run": 9, "Options": 10}


def _format_sections(command: Any, ctx: Any, formatter: Any) -> None:
    """Arguments, then the options grouped by their panel in SECTION_ORDER (typer's plain help lists them flat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None:
            name = "Arguments" if param.param_type_name == "argument" else None
            sections.setdefault(name or getattr(param, "rich_help_panel", None) or "Options", []).append(record)
    for name, rows in sorted(sections.items(), key=lambda item: SECTION_ORDER.get(item[0], 5)):
        with formatter.section(name):
            formatter.write_dl(rows)


class Command(TyperCommand):
    """A command whose --help shows its options in sections."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_sections(self, ctx, formatter)


class Group(TyperGroup):
    """A group whose --help shows its own options in sections, then its commands."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_sections(self, ctx, formatter)
        self.format_commands(ctx, formatter)


def described(summary: str, example: str) -> str:
    """Help text in the shared layout: the summary, then one example command on a line of its own."""
    return f"{summary}\n\n\b\nExample:\n  {example}\n"


def new_app(help_text: str, **settings: Any) -> typer.Typer:
    """A typer app in the shared style; register its commands with `app.command(cls=Command)`."""
    return typer.Typer(help=help_text, cls=Group, rich_markup_mode=None, add_completion=False,
                       pretty_exceptions_enable=False, context_settings=HELP_OPTIONS, **settings)


def error(prog: str, message: object) -> None:
    """Print `PROG: error: MESSAGE` on stderr, folded onto one line (multi-line messages joined by '; ')."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    print(f"{prog}: error: {'; '.join(lines)}", file=sys.stderr, flush=True)


def fail(prog: str, message: object, code: int = BAD_INPUT) -> NoReturn:
    """Report `message` as `error` does and end the command with `code` (raised as typer.Exit)."""
    error(prog, message)
    raise typer.Exit(code)


def run(app: typer.Typer, argv: Optional[Sequence[str]], prog: str) -> Any:
    """Parse `argv` with `app` and invoke its command; return what the command returns.

    Ends the process (SystemExit) as argparse does where parsing ends it: 0 after --help, 2 after a usage error
    (reported as one line that points at the command's --help); a typer.Exit raised by the command ends it
    with that code.
    """
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with command.make_context(prog, args) as ctx:
            return command.invoke(ctx)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        raise SystemExit(FAILED) from None
    except typer.TyperException as exc:  # click's UsageError / BadParameter / ClickException
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group name: its help, on stderr
            print(exc.format_message(), file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        context = getattr(exc, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        error(prog, exc.format_message() + hint)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
