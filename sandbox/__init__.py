"""The trust boundary: agent code is statically checked here and runs only in confined workers.

The public names are re-exported lazily (PEP 562): the worker process imports
`sandbox.runtime.*`, which imports this package first, and must not pay for the host side
(subprocess, threading, the checker) in its cold start or its attack surface.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.checker import CheckReport, check
    from sandbox.isolation import DoctorReport, doctor
    from sandbox.limits import Limits
    from sandbox.pool import BatchResult, QuarantinedError, SandboxLoadError, SandboxPool, TableResult

_EXPORTS = {
    "check": "sandbox.checker",
    "CheckReport": "sandbox.checker",
    "SandboxPool": "sandbox.pool",
    "BatchResult": "sandbox.pool",
    "TableResult": "sandbox.pool",
    "QuarantinedError": "sandbox.pool",
    "SandboxLoadError": "sandbox.pool",
    "Limits": "sandbox.limits",
    "doctor": "sandbox.isolation",
    "DoctorReport": "sandbox.isolation",
}
__all__ = [
    "BatchResult",
    "CheckReport",
    "DoctorReport",
    "Limits",
    "QuarantinedError",
    "SandboxLoadError",
    "SandboxPool",
    "TableResult",
    "check",
    "doctor",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
