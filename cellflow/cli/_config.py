"""Options of a verb from a TOML or YAML file, merged under the options given on the command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ._errors import CommandError

CONFIG_SUFFIXES = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}


def read_config(path: str) -> dict:
    """The table of options in ``path`` (``.toml``, ``.yaml`` or ``.yml``): option names as in ``--help``.

    Raises
    ------
    CommandError
        The file is missing, of another kind, not parseable, or not a flat table of options.
    """
    file = Path(path)
    kind = CONFIG_SUFFIXES.get(file.suffix.lower())
    if kind is None:
        raise CommandError(f"--config {path}: a config file ends in .toml, .yaml or .yml.")
    if not file.is_file():
        raise CommandError(f"--config {path} does not exist (or is not a file).")
    try:
        if kind == "TOML":
            import tomllib

            with open(file, "rb") as handle:
                table = tomllib.load(handle)
        else:
            import yaml

            with open(file, encoding="utf-8") as handle:
                table = yaml.safe_load(handle) or {}
    except Exception as error:  # the parsers' own errors say where the file is broken
        raise CommandError(f"--config {path} is not valid {kind}: {error}") from None
    if not isinstance(table, dict):
        raise CommandError(
            f"--config {path} must hold a table of options (name = value), not a {type(table).__name__}."
        )
    return table


def config_arguments(table: dict, parser: argparse.ArgumentParser, path: str) -> list[str]:
    """Command-line arguments equivalent to ``table``, to be placed before the user's own.

    Names may use ``-`` or ``_`` (``flow-steps`` or ``flow_steps``); a list gives several values
    (``covariate-keys = ["cell_line"]``); ``true``/``false`` switch a flag on or leave it off.
    Since argparse keeps the last value of an option, options on the command line win.
    """
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    arguments: list[str] = []
    for name, value in table.items():
        dest = str(name).replace("-", "_")
        action = actions.get(dest)
        if action is None:
            known = ", ".join(sorted(d.replace("_", "-") for d in actions))
            raise CommandError(f"--config {path}: unknown option {name!r}; the options of this verb are: {known}.")
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise CommandError(f"--config {path}: {name} is a switch; give true or false, not {value!r}.")
            arguments += [flag] if value else []
        elif isinstance(value, list):
            arguments += [flag, *map(str, value)]
        elif isinstance(value, dict | bool) or value is None:
            raise CommandError(f"--config {path}: {name} takes a value such as {flag} VALUE, not {value!r}.")
        else:
            arguments += [flag, str(value)]
    return arguments


def expand_config(argv: Sequence[str], verbs: dict[str, argparse.ArgumentParser]) -> list[str]:
    """``argv`` with ``--config FILE`` replaced by the file's options, placed right after the verb."""
    argv = list(argv)
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        return argv
    verb_at = next((i for i, a in enumerate(argv) if a in verbs), None)
    if verb_at is None:
        raise CommandError("--config goes after the verb, e.g. cellflow train --config train.toml.")
    rest, path = [], None
    tokens = iter(argv[verb_at + 1 :])
    for token in tokens:
        if token == "--config":
            path = next(tokens, None)
            if path is None:
                raise CommandError("--config needs a file: --config train.toml.")
        elif token.startswith("--config="):
            path = token.split("=", 1)[1]
        else:
            rest.append(token)
    if path is None:  # the option came before the verb
        raise CommandError("--config goes after the verb, e.g. cellflow train --config train.toml.")
    table = read_config(path)
    return [*argv[: verb_at + 1], *config_arguments(table, verbs[argv[verb_at]], path), *rest]
