"""Griffe extension for the API reference: read ``Example:`` (singular) as an ``Examples:`` section.

The project's docstrings use Google style with an ``Example:`` heading. Griffe only knows the
plural, and would render the singular as an admonition whose ``>>>`` lines Markdown turns into
block quotes (and whose printed lists, such as ``[[1, 0], [1, 1]]``, into broken reference links).
As an ``Examples`` section the doctest lines render as Python code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` headings to ``Examples:`` before docstrings are parsed."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
