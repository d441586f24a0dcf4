"""Alert delivery: a durable, deduplicated outbox of signal states and the deliverer that drains it.

The executor calls `Outbox.enqueue_many` for each batch's signals and its pipeline's alert
destinations before committing its log position; a `Deliverer` (a background thread of the
server or `logbus run`) sends them to webhooks, files or stdout with retries.
"""

from stream.alerts.delivery import USER_AGENT, Deliverer, DeliveryError
from stream.alerts.outbox import Claim, Outbox, destination_label
from stream.alerts.payloads import json_line, json_payload, slack_payload

__all__ = ["USER_AGENT", "Claim", "Deliverer", "DeliveryError", "Outbox", "destination_label", "json_line",
           "json_payload", "slack_payload"]
