"""Static validation of a pipeline, cheapest phase first: spec, then SQL, then each code snippet.

No event is read and no agent code runs here; this is what `validate_pipeline` and the first phase
of `logbus test` do. Every problem comes back as a `Diagnostic` naming its step (and, for code, the
line inside the snippet), ready to be shown to the agent as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from primitives.diagnostics import Diagnostic
from primitives.spec import PipelineSpec, SpecError, code_hash, code_snippets, load_spec


@dataclass(slots=True)
class Validation:
    """The outcome of validating one pipeline text."""

    spec: PipelineSpec | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    code_hash: str | None = None

    @property
    def valid(self) -> bool:
        return self.spec is not None and not self.diagnostics

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "code_hash": self.code_hash,
                "diagnostics": [d.to_dict() for d in self.diagnostics]}


def validate_pipeline(text: str | bytes, *, filename: str | None = None) -> Validation:
    """Parse and check a pipeline given as YAML or JSON text."""
    try:
        spec = load_spec(text, filename=filename)
    except SpecError as exc:
        return Validation(None, list(exc.diagnostics))
    return validate_spec(spec)


def validate_spec(spec: PipelineSpec) -> Validation:
    diagnostics: list[Diagnostic] = []
    snippets = code_snippets(spec)
    if snippets:
        from sandbox import check  # the checker (and its policy tables) only for pipelines with code
    for step_id, kind, source in snippets:
        report = check(source, kind)
        diagnostics.extend(d.with_step(step_id) for d in report.diagnostics)
    return Validation(spec, diagnostics, code_hash(spec))
