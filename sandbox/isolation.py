"""How a sandbox worker is launched, and the `doctor` report of which isolation layers hold here.

A worker is `python -I -S sandbox/runtime/worker_main.py ROOT SITE` with an empty environment in
its own session. When bubblewrap works, it wraps the worker: fresh pid, network, ipc, uts and
cgroup namespaces; a root filesystem holding only read-only binds of the system libraries, the
interpreter, the two packages the worker needs (msgpack, RestrictedPython: every other
site-package is hidden under a tmpfs) and the sandbox runtime; a private /tmp; no /home, no /etc,
no data directory. As root we deliberately skip bubblewrap's user namespace (part of
--unshare-all): it maps only uid 0, which would make the worker's drop to a separate uid
impossible; the other namespaces are the same as --unshare-all's.

Inside, the worker confines itself further (sandbox/runtime/confine.py). `doctor()` reports what
a real worker says it achieved, never what we expect it to have.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKER_PACKAGES = ("msgpack", "RestrictedPython")
# Layers the worker must achieve or refuse to run code: these need no privilege on Linux.
REQUIRED_LAYERS = ("rlimits", "no_new_privs", "seccomp", "empty_env", "isolated_interpreter")
UID_BASE, UID_SPAN = 600_000, 1_000_000


def tenant_uid(tenant: str) -> int:
    """A stable uid per tenant, outside the range of real accounts (same tenant, same uid,
    in every pool and process; two tenants share one only by a 1-in-a-million hash collision)."""
    digest = hashlib.blake2b(tenant.encode(), digest_size=8).digest()
    return UID_BASE + int.from_bytes(digest, "big") % UID_SPAN


@dataclass(frozen=True, slots=True)
class Launcher:
    """Everything needed to start a worker; built once per process by `launcher()`."""

    python: str
    prefix: str
    site: str
    root: str
    bwrap: str | None
    bwrap_reason: str
    read_paths: tuple[str, ...]

    @property
    def worker_script(self) -> str:
        return os.path.join(self.root, "sandbox", "runtime", "worker_main.py")

    def command(self) -> list[str]:
        inner = [self.python, "-I", "-S", self.worker_script, self.root, self.site]
        return self._bwrap_args() + inner if self.bwrap else inner

    def _bwrap_args(self) -> list[str]:
        assert self.bwrap is not None
        args = [
            self.bwrap,
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
        ]
        if os.geteuid() != 0:
            args.append("--unshare-user")
        for system_dir in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache"):
            if os.path.exists(system_dir):
                args += ["--ro-bind", system_dir, system_dir]
        args += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
        ]  # before binds that may lie under /tmp
        args += ["--ro-bind", self.prefix, self.prefix]
        if self.site.startswith(self.prefix + os.sep) or self.site.startswith("/usr/"):
            args += ["--tmpfs", self.site]  # hide every other installed package
        for package in WORKER_PACKAGES:
            path = os.path.join(self.site, package)
            args += ["--ro-bind", path, path]
        sandbox_dir = os.path.join(self.root, "sandbox")
        args += [
            "--ro-bind",
            os.path.join(sandbox_dir, "__init__.py"),
            os.path.join(sandbox_dir, "__init__.py"),
            "--ro-bind",
            os.path.join(sandbox_dir, "runtime"),
            os.path.join(sandbox_dir, "runtime"),
            "--chdir",
            "/",
            "--",
        ]
        return args


def _site_dir() -> str:
    import msgpack
    import RestrictedPython

    sites = {str(Path(m.__file__ or "").resolve().parent.parent) for m in (msgpack, RestrictedPython)}
    if len(sites) != 1:
        raise RuntimeError(
            f"msgpack and RestrictedPython must be installed in one directory; found {sorted(sites)}"
        )
    return sites.pop()


def _probe_bwrap(python: str) -> tuple[str | None, str]:
    path = shutil.which("bwrap")
    if path is None:
        return None, "bwrap not installed (Debian package bubblewrap)"
    try:
        probe = subprocess.run(
            [
                path,
                "--unshare-net",
                "--unshare-pid",
                "--die-with-parent",
                "--ro-bind",
                "/",
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                python,
                "-I",
                "-S",
                "-c",
                "pass",
            ],
            env={},
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"bwrap failed to start: {exc}"
    if probe.returncode != 0:
        return None, "bwrap cannot create namespaces here: " + probe.stderr.decode(errors="replace").strip()[
            :200
        ]
    return path, f"{path}: pid, net, ipc, uts namespaces; read-only binds of the interpreter and runtime only"


@functools.lru_cache(maxsize=1)
def launcher(root: str | None = None) -> Launcher:
    python = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    site = _site_dir()
    root_dir = str(Path(root).resolve()) if root else str(ROOT)
    bwrap, reason = _probe_bwrap(python)
    read_paths = (
        prefix,
        *(os.path.join(site, p) for p in WORKER_PACKAGES),
        os.path.join(root_dir, "sandbox"),
    )
    return Launcher(python, prefix, site, root_dir, bwrap, reason, read_paths)


@dataclass(slots=True)
class DoctorReport:
    """Which isolation layers a real worker achieved here; `ok` when every layer is active."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    startup_ms: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(layer["active"] for layer in self.layers.values())

    @property
    def missing(self) -> list[str]:
        return [name for name, layer in self.layers.items() if not layer["active"]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "layers": self.layers,
            "missing": self.missing,
            "startup_ms": self.startup_ms,
            "error": self.error,
        }

    def render(self) -> str:
        lines = ["sandbox isolation layers (reported by a live worker):"]
        for name, layer in self.layers.items():
            mark = "active " if layer["active"] else "MISSING"
            lines.append(f"  {mark}  {name:<22} {layer['detail']}")
        if self.startup_ms is not None:
            lines.append(f"worker start to first result: {self.startup_ms:.1f} ms")
        if self.error:
            lines.append(f"error: {self.error}")
        lines.append(
            "all layers active" if self.ok else "missing: " + ", ".join(self.missing or ["(worker failed)"])
        )
        return "\n".join(lines)


DOCTOR_SNIPPET = "def transform(event):\n    return event\n"


def doctor() -> DoctorReport:
    """Start a worker, run one event through it, and report the layers it says are active."""
    import time

    from sandbox.limits import Limits
    from sandbox.worker import WorkerError, WorkerProcess

    spec = launcher()
    report = DoctorReport()
    report.layers["bubblewrap"] = {"active": spec.bwrap is not None, "detail": spec.bwrap_reason}
    started = time.perf_counter()
    try:
        worker = WorkerProcess("transform", DOCTOR_SNIPPET, uid=tenant_uid("doctor"), limits=Limits())
    except WorkerError as exc:
        report.error = str(exc)
        report.layers.update(exc.layers)
        return report
    try:
        outcome = worker.run_batch([{"probe": 1}], deadline_s=5.0)
        report.startup_ms = (time.perf_counter() - started) * 1e3
        if outcome.status != "ok":
            report.error = f"probe batch failed: {outcome.status} {outcome.message}"
        report.layers.update(worker.layers)
        if spec.bwrap is not None and worker.pid_in_sandbox is not None and worker.pid_in_sandbox > 10:
            report.layers["bubblewrap"] = {
                "active": False,
                "detail": "worker is not in a private pid namespace",
            }
    finally:
        worker.close()
    return report
