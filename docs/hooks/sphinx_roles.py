"""Griffe extension: render the Sphinx roles of cellflow's numpydoc docstrings in mkdocs.

The docstrings follow numpydoc, so they use Sphinx roles (``:func:`setup```, ``:math:`x```,
``.. math::``) that mkdocstrings would print literally. This extension rewrites them into
Markdown before the docstrings are parsed:

- ``:func:`target``` (also ``class``, ``meth``, ``mod``, ``attr``, ``obj``, ``data``, ``exc``)
  becomes an *optional* cross-reference: a link where the target is documented, plain code
  otherwise (numpy, torch, private modules), so the strict build never fails on it.
  Relative names are looked up the way Sphinx does, from the object outwards.
- ``:math:`x``` becomes inline code, and a ``.. math::`` block an indented code block: the
  site renders offline, with no MathJax from a CDN.
- A ``Returns`` section written as prose, scanpy's way (``AnnData with ...`` at the section's
  indentation, no type line), gets an empty type line ``:`` with the prose indented under it;
  griffe would otherwise read every prose line as a separate return type. The type shown is
  then the function's return annotation.
- A parameter entry naming several parameters (``accelerator, devices``) is repeated once per
  name: griffe would otherwise show the first one's type and default for all of them.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_XREF = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|obj|data|exc):`(?P<body>[^`]+)`")
_MATH_ROLE = re.compile(r":math:`(?P<body>[^`]+)`")
_MATH_ONE_LINE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]+(?P<body>\S.*)$", re.MULTILINE)
_MATH_BLOCK_START = re.compile(r"^[ \t]*\.\. math::[ \t]*\n", re.MULTILINE)
_DASHES = re.compile(r"-{3,}")
_GROUPED_NAMES = re.compile(r"(?P<indent>[ \t]*)(?P<names>\*{0,2}\w+(?:,[ \t]*\*{0,2}\w+)+)(?P<type>[ \t]+:.*)?")


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles and math directives into Markdown in every docstring."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the docstring of ``obj`` once the object tree is complete."""
        if obj.docstring is None:
            return
        text = obj.docstring.value
        text = _MATH_ONE_LINE.sub(lambda m: f"\n{m['indent']}    {m['body']}\n", text)
        text = _MATH_BLOCK_START.sub("", text)
        text = _MATH_ROLE.sub(lambda m: f"`{m['body']}`", text)
        text = _XREF.sub(lambda m: _cross_reference(obj, m["body"]), text)
        obj.docstring.value = _split_grouped_parameters(_prose_returns_as_description(text))


def _is_section_header(lines: list[str], i: int) -> bool:
    return i + 1 < len(lines) and bool(lines[i].strip()) and bool(_DASHES.fullmatch(lines[i + 1].strip()))


def _split_grouped_parameters(text: str) -> str:
    """Repeat an entry ``a, b`` of a ``Parameters`` section as ``a`` and ``b`` with the same description."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    in_parameters, indent = False, 0
    while i < len(lines):
        line = lines[i]
        if _is_section_header(lines, i):
            in_parameters = line.strip() in ("Parameters", "Other Parameters")
            indent = len(line) - len(line.lstrip())
            out += lines[i : i + 2]
            i += 2
            continue
        grouped = _GROUPED_NAMES.fullmatch(line) if in_parameters else None
        if grouped and len(grouped["indent"]) == indent:
            end = i + 1
            while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
                end += 1
            while end > i + 1 and not lines[end - 1].strip():
                end -= 1
            for name in grouped["names"].split(","):
                out.append(f"{grouped['indent']}{name.strip()}{grouped['type'] or ''}")
                out += lines[i + 1 : end]
            i = end
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _prose_returns_as_description(text: str) -> str:
    """Give prose ``Returns`` / ``Yields`` sections the empty type line ``:`` that numpydoc parsers expect."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].strip() in ("Returns", "Yields") and _is_section_header(lines, i):
            start = i + 2
            while start < len(lines) and not lines[start].strip():
                start += 1
            end = start
            while end < len(lines) and not _is_section_header(lines, end):
                end += 1
            while end > start and not lines[end - 1].strip():
                end -= 1
            block = lines[start:end]
            indent = len(lines[i]) - len(lines[i].lstrip())
            # Prose: nothing indented under the first line, and more than a bare type on it.
            is_prose = block and all(len(line) - len(line.lstrip()) == indent for line in block if line.strip())
            if is_prose and (len(block) > 1 or " " in block[0].strip() or block[0].rstrip().endswith(".")):
                pad = " " * indent
                lines[start:end] = [pad + ":"] + [("    " + line) if line.strip() else "" for line in block]
            i = end
        i += 1
    return "\n".join(lines)


def _cross_reference(obj: griffe.Object, body: str) -> str:
    """An optional autoref for a role body: ``target``, ``~target`` or ``title <target>``."""
    explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^<>]+)>", body)
    if explicit:
        title, target = explicit["title"], explicit["target"].lstrip("~")
    else:
        target = body.lstrip("~")
        title = target.rsplit(".", 1)[-1] if body.startswith("~") else target
    identifier = _resolve(obj, target)
    return f'<autoref identifier="{html.escape(identifier)}" optional><code>{html.escape(title)}</code></autoref>'


def _resolve(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` seen from ``obj``: its own members, then its parents' (as Sphinx looks up)."""
    head, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        member = scope.members.get(head) if hasattr(scope, "members") else None
        if member is not None:
            path = member.target_path if member.is_alias else member.path
            return f"{path}.{rest}" if rest else path
        scope = scope.parent
    return target
