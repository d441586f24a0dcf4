"""What a destination receives for one signal state: the signal as JSON, or a Slack message.

The JSON payload is the signal itself (the `signals` table row), so a receiver upserts by `id`.
The Slack payload follows the incoming-webhook format: `text` is the notification fallback,
`blocks` the message. Slack renders `&`, `<` and `>` as markup in mrkdwn, so signal text (which
comes from events, i.e. from whoever wrote the logs) is escaped, and every text is cut to Slack's
limits (header 150 characters, section 3,000, field 2,000) instead of being rejected with a 400.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["json_line", "json_payload", "slack_payload"]

SEVERITY_MARK = {"info": "⚪", "low": "🔵", "medium": "🟡", "high": "🟠", "critical": "🔴"}
HEADER_MAX, SECTION_MAX, FIELD_MAX = 150, 3000, 2000


def json_payload(signal: dict[str, Any]) -> bytes:
    """The webhook body for `format: json`: the signal, UTF-8 JSON."""
    return json.dumps(signal, ensure_ascii=False, default=str, separators=(",", ":")).encode()


def json_line(signal: dict[str, Any]) -> str:
    """One line for `file` and `stdout`: the signal as JSON, newline-terminated, no raw newlines inside."""
    return json.dumps(signal, ensure_ascii=False, default=str, separators=(",", ":")) + "\n"


def slack_payload(signal: dict[str, Any], *, update: bool = False) -> dict[str, Any]:
    """A Slack incoming-webhook message; `update` marks a later state of an alert already sent."""
    severity = str(signal.get("severity", "info"))
    title = str(signal.get("title") or signal.get("pipeline") or "alert")
    count = signal.get("count", 1)
    prefix = "Updated: " if update else ""
    fallback = f"{prefix}[{severity.upper()}] {title} ({count} event{'' if count == 1 else 's'})"
    header = _cut(f"{SEVERITY_MARK.get(severity, '')} {prefix}{title}".strip(), HEADER_MAX)
    pipeline = f"{signal.get('pipeline', '?')} v{signal.get('version', '?')}"
    fields = [("Severity", severity), ("Pipeline", pipeline), ("Events", str(count)),
              ("Dedup key", str(signal.get("dedup", ""))), ("First seen", str(signal.get("first_seen", ""))),
              ("Last seen", str(signal.get("last_seen", "")))]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
        {"type": "section", "fields": [_mrkdwn(f"*{name}*\n{_cut(_escape(value), FIELD_MAX - 40)}")
                                       for name, value in fields]},
    ]
    context = signal.get("context")
    if context:
        rendered = json.dumps(context, ensure_ascii=False, default=str, indent=1)
        code = _cut(_escape(rendered), SECTION_MAX - 8)
        blocks.append({"type": "section", "text": _mrkdwn(f"```{code}```")})
    signal_ref = _escape(str(signal.get("id")))
    blocks.append({"type": "context", "elements": [_mrkdwn(f"LogBus signal `{signal_ref}`")]})
    return {"text": _escape(fallback), "blocks": blocks}


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


def _escape(text: str) -> str:
    """Slack's three control characters; everything else is literal."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
