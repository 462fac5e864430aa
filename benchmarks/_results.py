"""The results page: benchmark scripts write their headline tables into ``docs/results.md``.

Each script owns one section of the page, the text between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->``; :func:`write_results_section` replaces it (or appends it when the
page has none), so the prose around the sections survives a rerun. Scripts call it only with
their ``--results-page`` flag: a casual run never rewrites the documentation.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

RESULTS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "results.md"
RESULTS_FLAG = "--results-page"
RESULTS_HELP = "write the headline table into its section of docs/results.md (off by default)"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def write_results_section(name: str, markdown: str, *, page: Path = RESULTS_PAGE) -> Path:
    """Replace the text between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in ``page``.

    The section is appended at the end of the page (created if needed) when its markers are
    absent. Returns the page's path.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"results section name {name!r}: use letters, digits, '.', '_' and '-' only.")
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    block = f"{start}\n\n{markdown.strip()}\n\n{end}"  # blank lines: the Markdown is not read as HTML
    text = page.read_text() if page.exists() else "# Results\n"
    begins, ends = text.count(start), text.count(end)
    if begins == ends == 0:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    elif begins == ends == 1 and text.index(start) < text.index(end):
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        raise ValueError(f"{page}: the markers of section {name!r} are unbalanced or repeated; fix the page by hand.")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    print(f"wrote section {name!r} of {page}")
    return page


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran this script, as a user would type it (without ``--results-page``)."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    try:
        script = script.relative_to(RESULTS_PAGE.parents[1])
    except ValueError:
        script = Path(argv[0])
    words = [".venv/bin/python", str(script), *(a for a in argv[1:] if a != RESULTS_FLAG)]
    threads = os.environ.get("OMP_NUM_THREADS")
    return ("" if threads is None else f"OMP_NUM_THREADS={threads} ") + shlex.join(words)


def provenance(extra: str = "", *, machine: str | None = None) -> str:
    """One line for the top of a section: the date, the command and the machine.

    ``machine`` replaces the description of this machine, for a section written from results
    that were measured elsewhere (say, on a GPU machine, by a report run here).
    """
    import torch

    if machine is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        machine = f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), {cores} CPU core(s) available"
        if torch.cuda.is_available():
            machine += f", {torch.cuda.get_device_name()}"
    line = f"Measured {datetime.date.today().isoformat()} with `{command_line()}` ({machine})."
    return f"{line} {extra}".strip()


def markdown_table(frame, formats: Mapping[str, str | Callable] | None = None, *, index: bool = False) -> str:
    """A pandas frame as a Markdown pipe table; ``formats`` maps a column to a format string or function.

    Missing values (and values a format cannot take) are left blank.
    """
    import pandas as pd

    frame = frame.reset_index() if index else frame
    formats = dict(formats or {})

    def cell(column, value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return ""
        fmt = formats.get(column)
        if fmt is None:
            text = str(value)
        elif callable(fmt):
            text = fmt(value)
        else:
            try:
                text = fmt.format(value)
            except (ValueError, TypeError):
                text = str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in frame.columns) + " |")
    return "\n".join(lines)
