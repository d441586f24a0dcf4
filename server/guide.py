"""The guide agents read (`get_guide`, `logbus guide`), assembled from its single sources.

Step kinds document themselves through their options models (primitives.guide); the Python
language reference is rendered from the sandbox allowlist. This module only puts them together,
because primitives may not import the sandbox.
"""

from __future__ import annotations

from primitives.guide import render_guide
from sandbox.runtime.allowlist import describe_language


def guide_text(topic: str | None = None) -> str:
    """The guide, or one topic of it; raises KeyError naming the known topics for an unknown one."""
    return render_guide(topic, language=describe_language())
