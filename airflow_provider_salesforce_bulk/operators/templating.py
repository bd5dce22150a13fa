"""Which strings of a templated field are Jinja templates: only those that hold Jinja's markup.

Airflow compiles every string of a templated field as a template on every render (each try and each
resume from deferral): a literal ``records`` list of 5,000 rows cost about 6 s of CPU per render.
A string without markup renders to itself, except that Jinja drops one trailing newline (unless the
DAG sets ``keep_trailing_newline``) and a native environment (``render_template_as_native_obj``)
turns ``"123"`` into a number and ``"True"`` into a bool: a record's value changed on its way to
Salesforce. So such strings are taken as they are. A string holding the environment's own
delimiters is rendered as before, and so is every string when the DAG configures line statements or
line comments (their prefixes may match anywhere).
"""

from __future__ import annotations

from typing import Any

__all__ = ["holds_markup"]


def holds_markup(text: str, env: Any) -> bool:
    """Whether rendering ``text`` in ``env`` (a ``jinja2.Environment``) could do more than return it."""
    if env.line_statement_prefix or env.line_comment_prefix:
        return True
    starts = (env.variable_start_string, env.block_start_string, env.comment_start_string)
    return any(start in text for start in starts)
