"""The W2 function that every Python runner calls; LogBus runs the same body from
bench/pipelines/python_transform.yaml (the harness checks that the two bodies agree)."""

from typing import Any


def transform(event: dict[str, Any]) -> dict[str, Any]:
    event["method"] = event["method"].lower()
    event["is_error"] = event["status"] >= 500
    event["route"] = event["path"].split("?")[0]
    return event
