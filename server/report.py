"""Human-readable rendering of a trial run, for `logbus test`.

The JSON form (`--json`) is the trial report's `to_dict()`; this is the same content laid out for a
terminal: what went in and out of each step, what to fix first, then samples.
"""

from __future__ import annotations

import json
from typing import Any

from stream.trial import TrialReport

SAMPLE_OUTPUTS = 5


def render_trial(report: TrialReport, *, pipeline: str) -> str:
    lines: list[str] = []
    v = report.validation
    if not v.valid:
        lines.append(f"{pipeline}: INVALID")
        lines.extend(f"  {d.render()}" for d in v.diagnostics)
        return "\n".join(lines)
    status = "ok" if report.ok else "FAILED (steps with errors: " + ", ".join(report.failed_steps) + ")"
    lines.append(f"{pipeline}: {status} — {report.events_read:,} events read in {report.seconds:.2f}s")
    lines.append(f"  code_hash {v.code_hash}")
    lines.append("")
    lines.append(_steps_table(report.steps))
    if report.errors:
        lines.append("")
        lines.append("errors (grouped):")
        for group in report.errors:
            where = f"line {group['line']}" if group["line"] is not None else "no line"
            lines.append(f"  {group['count']:>6} × step '{group['step']}' {where}: "
                         f"{group['error_type']}: {group['message']} [{group['reason']}]")
    if report.dead_letters:
        reasons = ", ".join(f"{k} {n}" for k, n in sorted(report.dead_letter_reasons.items()))
        lines.append("")
        lines.append(f"dead letters: {report.dead_letters:,} ({reasons})")
        for sample in report.dead_letter_samples[:5]:
            lines.append(f"  [{sample['step']}] {sample['reason']}: {sample['message']}")
    lines.append("")
    lines.append(f"signals: {len(report.signals)}")
    for signal in report.signals[:50]:
        lines.append(f"  {signal.get('severity', '?'):<8} {signal.get('title')}  "
                     f"(dedup {signal.get('dedup')!r}, count {signal.get('count')}, "
                     f"{signal.get('first_seen')} → {signal.get('last_seen')})")
    if len(report.signals) > 50:
        lines.append(f"  ... {len(report.signals) - 50} more (use --json)")
    lines.append("")
    lines.append(f"outputs: {report.output_count:,}" + (" (first shown)" if report.outputs else ""))
    for event in report.outputs[:SAMPLE_OUTPUTS]:
        lines.append("  " + _one_line(event))
    if report.logs:
        lines.append("")
        lines.append("print() output (first lines):")
        lines.extend(f"  {line}" for line in report.logs[:10])
    return "\n".join(lines)


def _steps_table(steps: list[dict[str, Any]]) -> str:
    header = f"  {'step':<24} {'kind':<10} {'in':>10} {'out':>10} {'signals':>8} {'errors':>8} {'ms':>8}"
    rows = [header]
    for s in steps:
        rows.append(f"  {s['id']:<24} {s['kind']:<10} {s['in']:>10,} {s['out']:>10,} {s['signals']:>8,} "
                    f"{s['errors']:>8,} {s['seconds'] * 1000:>8.1f}")
    return "\n".join(rows)


def _one_line(event: dict[str, Any], width: int = 160) -> str:
    text = json.dumps(event, default=str, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"
