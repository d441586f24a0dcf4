"""Names and settings that reach the log from outside, checked before they touch a file or a row.

Tenant names become directory names, so they are held to a pattern that cannot spell a path
(`..`, `/`, a leading dot). Stream names follow the pipeline-name pattern of DESIGN §2.1 so that
a stream can be named in a spec, a URL path and a file name without quoting.
"""

from __future__ import annotations

import re

from stream.log.errors import InvalidName

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_CONSUMER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}")
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
FORMATS = ("ndjson", "lines")
_NAME_RULE = "1-63 characters a-z, 0-9, '_' or '-', starting with a letter or digit"


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _NAME.fullmatch(tenant):
        raise InvalidName(f"tenant name {tenant!r} is invalid: use {_NAME_RULE} (for example 'default')")
    return tenant


def check_stream(stream: str) -> str:
    if not isinstance(stream, str) or not _NAME.fullmatch(stream):
        raise InvalidName(f"stream name {stream!r} is invalid: use {_NAME_RULE} (for example 'web-access')")
    return stream


def check_consumer(consumer: str) -> str:
    if not isinstance(consumer, str) or not _CONSUMER.fullmatch(consumer):
        raise InvalidName(
            f"consumer name {consumer!r} is invalid: use 1-128 characters A-Z, a-z, 0-9 or '_.:@/-', "
            "starting with a letter or digit (for example 'ssh-brute-force@3')"
        )
    return consumer


def check_idempotency_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidName(
            "idempotency key must be 1-255 printable ASCII characters without spaces "
            f"(got {key[:40]!r}); a UUID or a hash of the request works well"
        )
    return key


def check_time_field(field: str | None) -> str | None:
    if field is None:
        return None
    if not isinstance(field, str) or not field or len(field) > 256 or not field.isprintable():
        raise InvalidName(f"time field {field!r} is invalid: name an event field "
                          "(1-256 printable characters)")
    return field


def check_format(fmt: str | None) -> str | None:
    if fmt is not None and fmt not in FORMATS:
        raise InvalidName(f"stream format {fmt!r} is invalid: use one of {', '.join(FORMATS)}")
    return fmt


def check_positive(value: float | None, what: str) -> float | None:
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value <= 0):
        raise InvalidName(f"{what} must be a positive number or None (no limit); got {value!r}")
    return value
