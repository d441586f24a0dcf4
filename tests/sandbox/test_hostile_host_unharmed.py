"""Every statically rejected hostile snippet, run anyway: the host stays unharmed.

`test_checker.py` proves each hostile snippet is refused by the static layers with its code and
line. Layers are assumed to fail, so here each one is also pushed past the static check into a
real worker twice: once through RestrictedPython (as if our AST policy had a hole), once as plain
Python with both static layers gone (as if RestrictedPython had one too). Whatever the snippet
manages — a load error, per-event errors, or a result — the loopback canary hears nothing, no
file appears in the watched directories, the host's secret appears nowhere in what comes back,
and the next batch, in a fresh worker, still works.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.pool import QuarantinedError, SandboxLoadError, SandboxPool
from tests.sandbox.conftest import Canary
from tests.sandbox.test_checker import HOSTILE

HEALTHY = "def transform(event):\n    return {'ok': event['n']}\n"
EVENTS = [{"n": 1, "message": "hello", "path": "/etc/passwd"}]


def _listing(directory: Path) -> set[str]:
    return set(os.listdir(directory))


def _attempt(pool: SandboxPool, tenant: str, source: str) -> str:
    """Run the snippet; return everything it produced as text (for the secret check)."""
    try:
        result = pool.run(tenant, "transform", source, EVENTS)
    except (SandboxLoadError, QuarantinedError) as exc:
        return repr(exc)
    return repr(result)


@pytest.mark.parametrize("mode", ["restricted", "raw"])
def test_every_hostile_snippet_leaves_the_host_unharmed(
    mode: str, pool: SandboxPool, raw_pool: SandboxPool, canary: Canary, secret: str, tmp_path: Path
) -> None:
    target = pool if mode == "restricted" else raw_pool
    watched = [tmp_path, Path("/tmp"), Path.cwd()]
    before = {d: _listing(d) for d in watched}
    for index, (name, source, _code, _line) in enumerate(HOSTILE):
        produced = _attempt(target, f"hostile-{index}", source)
        assert secret not in produced, f"{name}: the host's secret leaked"
    assert canary.hits == [], f"the loopback canary was reached: {canary.hits}"
    appeared = {str(d): sorted(_listing(d) - before[d]) for d in watched}
    # other processes may create files in /tmp; nothing a worker names may appear
    assert not appeared[str(tmp_path)] and not appeared[str(Path.cwd())], appeared
    assert not [f for f in appeared["/tmp"] if "pwn" in f or "hostile" in f], appeared
    healthy = target.run("after", "transform", HEALTHY, [{"n": 7}])
    # the restricted runtime normalises a transform's dict to [dict]; raw mode returns it as is
    assert healthy.values in ([[{"ok": 7}]], [{"ok": 7}]) and healthy.errors == [], healthy.errors
    assert len(HOSTILE) >= 50
