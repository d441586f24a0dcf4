"""Diagnostics: the one shape in which every check reports a problem.

Static checks of agent code (sandbox/), of SQL expressions and of specs (primitives/) all return
`Diagnostic`s. They travel verbatim to the agent over MCP, so `message` says what is wrong and
`hint` what to do instead, both written for an LLM that will fix its code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in a submission.

    `code` is stable (agents and tests match on it); `line`/`col` are 1-based positions inside the
    snippet or expression the diagnostic is about; `step` names the pipeline step when known.
    """

    code: str
    message: str
    line: int | None = None
    col: int | None = None
    hint: str | None = None
    step: str | None = None

    def with_step(self, step: str) -> Diagnostic:
        return replace(self, step=step)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        """One actionable line: `step 'x' line 3: <message>; <hint>`."""
        where = []
        if self.step:
            where.append(f"step '{self.step}'")
        if self.line is not None:
            where.append(f"line {self.line}")
        prefix = " ".join(where)
        text = f"{prefix}: {self.message}" if prefix else self.message
        return f"{text}; {self.hint}" if self.hint else text
