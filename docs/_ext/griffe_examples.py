"""Griffe extension for the API reference: read a docstring's ``Example:`` section as ``Examples:``.

armt's docstrings head their doctests ``Example:``; Google-style parsing in griffe takes only
``Examples:`` as a code section and renders ``Example:`` as an admonition of Markdown, where
``>>>`` becomes a quote and output such as ``[16, 0]`` reads as a link reference. Renaming the
header at load time keeps the source as the doctests want it and the rendering as code.
"""

from __future__ import annotations

import re

import griffe

_HEADER = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rewrite ``Example:`` section headers to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADER.sub(r"\1Examples:", obj.docstring.value)
