"""The benchmark's input: deterministic web-access events, one JSON object per line.

The same seed and count always give the same bytes, so every runner in a run (and every run on
another machine) reads an identical file. Event time only moves forward (`ts` is epoch seconds,
40 events per second), so no runner drops a late event and all of them must agree exactly on
every 60 s window.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

START_TS = 1_767_225_600  # 2026-01-01T00:00:00Z
EVENTS_PER_SECOND = 40
HOSTS = tuple(f"web-{i:02d}" for i in range(1, 51))
METHODS = ("GET",) * 80 + ("POST",) * 12 + ("PUT",) * 3 + ("DELETE",) * 2 + ("HEAD",) * 3
STATUSES = (200,) * 70 + (201, 204, 204, 301, 302, 304, 304, 304) + (400, 401, 403, 403) + (404,) * 8 + (
    429, 429, 500, 500, 502, 503)
PATHS = (
    "/", "/index.html", "/api/v1/users/{n}", "/api/v1/orders/{n}?expand=items", "/search?q={w}&page={d}",
    "/static/app.{h}.js", "/static/style.{h}.css", "/login", "/cart?session={h}", "/products/{n}",
    "/wp-login.php", "/.env", "/healthz",
)
WORDS = ("shoes", "laptop", "coffee", "router", "camera", "desk", "lamp", "phone")
UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "curl/8.5.0",
    "python-requests/2.32.3",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
)
REFERERS = ("-", "-", "-", "https://www.google.com/", "https://shop.example.net/products/{n}",
            "https://news.example.org/")


def generate(path: Path, count: int, seed: int = 42) -> None:
    """Write `count` events to `path` (about 210 bytes each), replacing it atomically."""
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with tmp.open("w", encoding="utf-8") as out:
        lines = []
        for i in range(count):
            lines.append(dumps(_event(rng, i)))
            if len(lines) == 10_000:
                out.write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            out.write("\n".join(lines) + "\n")
    tmp.replace(path)


def _event(rng: random.Random, i: int) -> dict[str, object]:
    path = rng.choice(PATHS).format(n=rng.randint(1, 99_999), w=rng.choice(WORDS), d=rng.randint(1, 9),
                                    h=f"{rng.getrandbits(32):08x}")
    status = rng.choice(STATUSES)
    return {
        "ts": START_TS + i // EVENTS_PER_SECOND,
        "host": rng.choice(HOSTS),
        "ip": f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        "method": rng.choice(METHODS),
        "path": path,
        "status": status,
        "bytes": 0 if status in (204, 304) else rng.randint(120, 250_000),
        "ua": rng.choice(UAS),
        "referer": rng.choice(REFERERS).format(n=rng.randint(1, 99_999)),
    }
