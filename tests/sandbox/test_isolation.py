"""The process layer holds on its own: snippets run here as plain Python with full builtins (the
static check and RestrictedPython are bypassed through the test-only raw mode), and still cannot
reach the network, the host's files, its environment or other processes.

Every case asserts the specific outcome inside the worker AND that the host is unharmed: the
loopback canary heard nothing, no file appeared, the secret is in no output, and a fresh worker
still runs the next batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sandbox.isolation import doctor, launcher, tenant_uid
from sandbox.pool import BatchResult, SandboxPool
from tests.sandbox.conftest import Canary

LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def run_raw(pool: SandboxPool, body: str, **names: Any) -> BatchResult:
    consts = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    source = (
        LIBC + consts + "def transform(event):\n" + "".join(f"    {line}\n" for line in body.splitlines())
    )
    return pool.run("hostile", "transform", source, [{"n": 1}])


def assert_host_unharmed(
    pool: SandboxPool, result: BatchResult, canary: Canary, secret: str, tmp_path: Path
) -> None:
    assert canary.hits == [], f"the loopback canary was reached: {canary.hits}"
    assert list(tmp_path.iterdir()) == [], "a file appeared on the host"
    assert secret not in repr(result), "the host's secret leaked into the result"
    after = pool.run(
        "hostile", "transform", "def transform(event):\n    return {'ok': event['n']}\n", [{"n": 7}]
    )
    assert after.values == [{"ok": 7}] and after.errors == []


def value(result: BatchResult) -> Any:
    assert result.errors == [], result.errors
    return result.values[0]


CASES = {
    "tcp_socket": (
        "s = libc.socket(2, 1, 0)\nreturn {'fd': s, 'errno': ctypes.get_errno()}",
        {"fd": -1, "errno": 1},
    ),
    "udp_socket": (
        "s = libc.socket(2, 2, 0)\nreturn {'fd': s, 'errno': ctypes.get_errno()}",
        {"fd": -1, "errno": 1},
    ),
    "unix_socketpair": (
        "fds = (ctypes.c_int * 2)()\nrc = libc.socketpair(1, 1, 0, fds)\n"
        "return {'fd': rc, 'errno': ctypes.get_errno()}",
        {"fd": -1, "errno": 1},
    ),
    "fork": (
        "try:\n    os.fork()\nexcept OSError as e:\n    return {'fd': -1, 'errno': e.errno}\n"
        "return {'fd': 0, 'errno': 0}",
        {"fd": -1, "errno": 1},
    ),
    "exec": (
        "try:\n    os.execv('/bin/sh', ['sh', '-c', 'true'])\nexcept OSError as e:\n"
        "    return {'fd': -1, 'errno': e.errno}",
        {"fd": -1, "errno": 1},
    ),
    "posix_spawn": (
        "try:\n    os.posix_spawn('/bin/true', ['true'], {})\nexcept OSError as e:\n"
        "    return {'fd': -1, 'errno': e.errno}",
        {"fd": -1, "errno": 1},
    ),
    "setuid_root": (
        "rc = libc.setuid(0)\nreturn {'fd': rc, 'errno': ctypes.get_errno()}",
        {"fd": -1, "errno": 1},
    ),
    "unshare_user_ns": (
        "rc = libc.unshare(0x10000000)\nreturn {'fd': rc, 'errno': ctypes.get_errno()}",
        {"fd": -1, "errno": 1},
    ),
    "kill_parent": (
        "try:\n    os.kill(os.getppid(), 9)\nexcept OSError as e:\n    return {'fd': -1, 'errno': e.errno}",
        {"fd": -1, "errno": 1},
    ),
    "executable_memory": (
        "libc.mmap.restype = ctypes.c_void_p\n"
        "p = libc.mmap(None, 4096, 7, 0x22, -1, 0)\n"
        "return {'fd': -1 if p in (None, 2**64 - 1) else 0, 'errno': ctypes.get_errno()}",
        {"fd": -1, "errno": 1},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forbidden_syscall_fails_with_eperm_and_host_is_unharmed(
    case: str, raw_pool: SandboxPool, canary: Canary, secret: str, tmp_path: Path
) -> None:
    body, expected = CASES[case]
    result = run_raw(raw_pool, body)
    assert value(result) == expected
    assert_host_unharmed(raw_pool, result, canary, secret, tmp_path)


def test_connect_to_loopback_canary_is_refused(
    raw_pool: SandboxPool, canary: Canary, secret: str, tmp_path: Path
) -> None:
    body = (
        "import struct\n"
        "addr = struct.pack('<HH4s8x', 2, PORT >> 8 | (PORT & 255) << 8, bytes([127, 0, 0, 1]))\n"
        "out = []\nfor kind in (1, 2):\n    fd = libc.socket(2, kind, 0)\n"
        "    out.append(libc.connect(fd, addr, 16))\n"
        "    out.append(libc.sendto(fd, b'leak', 4, 0, addr, 16))\n"
        "return {'rcs': out}"
    )
    result = run_raw(raw_pool, body, PORT=canary.port)
    assert value(result) == {"rcs": [-1, -1, -1, -1]}
    assert_host_unharmed(raw_pool, result, canary, secret, tmp_path)


def test_dns_lookup_fails(raw_pool: SandboxPool, canary: Canary, secret: str, tmp_path: Path) -> None:
    body = (
        "res = ctypes.c_void_p()\nrc = libc.getaddrinfo(b'example.com', b'80', None, ctypes.byref(res))\n"
        "return {'resolved': rc == 0}"
    )
    result = run_raw(raw_pool, body)
    assert value(result) == {"resolved": False}
    assert_host_unharmed(raw_pool, result, canary, secret, tmp_path)


def test_file_write_on_host_is_impossible(
    raw_pool: SandboxPool, canary: Canary, secret: str, tmp_path: Path
) -> None:
    body = (
        "out = {}\nfor p in (TARGET, '/tmp/x', '/pwned'):\n    try:\n        open(p, 'w').write('x')\n"
        "        out[p] = 'written'\n    except OSError as e:\n        out[p] = type(e).__name__\nreturn out"
    )
    target = str(tmp_path / "pwned.txt")
    result = run_raw(raw_pool, body, TARGET=target)
    assert set(value(result).values()) <= {"PermissionError", "FileNotFoundError"}
    assert not Path(target).exists()
    assert_host_unharmed(raw_pool, result, canary, secret, tmp_path)


def test_host_files_are_not_readable(
    raw_pool: SandboxPool, canary: Canary, secret: str, tmp_path: Path
) -> None:
    readme = str(Path(__file__).resolve().parents[2] / "README.md")
    body = (
        "out = {}\nfor p in ('/etc/passwd', '/proc/1/environ', README, '/root/.bashrc'):\n    try:\n"
        "        out[p] = open(p, 'rb').read(64).decode('latin-1')\n    except OSError as e:\n"
        "        out[p] = type(e).__name__\nreturn out"
    )
    result = run_raw(raw_pool, body, README=readme)
    got = value(result)
    assert got["/etc/passwd"] in {"FileNotFoundError", "PermissionError"}
    assert got[readme] in {"FileNotFoundError", "PermissionError"}
    assert got["/root/.bashrc"] in {"FileNotFoundError", "PermissionError"}
    assert secret not in got["/proc/1/environ"]
    assert_host_unharmed(raw_pool, result, canary, secret, tmp_path)


def test_environment_holds_no_host_secret(
    raw_pool: SandboxPool, canary: Canary, secret: str, tmp_path: Path
) -> None:
    result = run_raw(raw_pool, "return {'env': sorted(os.environ), 'uid': os.getuid(), 'pid': os.getpid()}")
    got = value(result)
    assert "LOGBUS_TEST_SECRET" not in got["env"]
    assert got["uid"] == tenant_uid("hostile") != 0
    assert got["pid"] != os.getpid()
    assert_host_unharmed(raw_pool, result, canary, secret, tmp_path)


def test_ptrace_kills_the_worker_and_only_that_event_fails(
    raw_pool: SandboxPool, canary: Canary, secret: str, tmp_path: Path
) -> None:
    source = LIBC + (
        "def transform(event):\n    if event['n'] == 2:\n        libc.ptrace(16, 1, 0, 0)\n"
        "    return {'n': event['n']}\n"
    )
    result = raw_pool.run("hostile", "transform", source, [{"n": i} for i in range(5)])
    assert [e.index for e in result.errors] == [2]
    assert result.errors[0].reason == "crash" and "forbidden system call" in result.errors[0].message
    assert result.values == [{"n": 0}, {"n": 1}, None, {"n": 3}, {"n": 4}]
    assert_host_unharmed(raw_pool, result, canary, secret, tmp_path)


def test_print_flood_goes_nowhere_near_the_protocol(
    raw_pool: SandboxPool, canary: Canary, secret: str, tmp_path: Path
) -> None:
    source = (
        "def transform(event):\n    for i in range(20000):\n        print('x' * 100)\n"
        "    return {'done': 1}\n"
    )
    result = raw_pool.run("hostile", "transform", source, [{"n": 1}, {"n": 2}])
    assert result.values == [{"done": 1}, {"done": 1}] and result.errors == []
    assert len(result.logs) == 0
    assert_host_unharmed(raw_pool, result, canary, secret, tmp_path)


def test_oversized_result_fails_that_event_as_bad_output(
    raw_pool: SandboxPool, canary: Canary, secret: str, tmp_path: Path
) -> None:
    source = "def transform(event):\n    return {'x': 'a' * (8 * 1024 * 1024 if event['n'] == 1 else 10)}\n"
    result = raw_pool.run("hostile", "transform", source, [{"n": i} for i in range(4)])
    assert [(e.index, e.reason) for e in result.errors] == [(1, "bad_output")]
    assert result.values[0] == {"x": "a" * 10} and result.values[3] == {"x": "a" * 10}
    assert_host_unharmed(raw_pool, result, canary, secret, tmp_path)


def test_doctor_reports_every_layer_from_a_live_worker() -> None:
    report = doctor()
    expected = {
        "bubblewrap",
        "rlimits",
        "network_namespace",
        "no_new_privs",
        "landlock",
        "separate_uid",
        "seccomp",
        "empty_env",
        "isolated_interpreter",
        "host_files_hidden",
    }
    assert set(report.layers) == expected
    assert report.error is None
    assert report.startup_ms is not None and report.startup_ms < 5000
    text = report.render()
    for name in expected:
        assert name in text
    # On this machine (root, Linux >= 6.7, bubblewrap installed) every layer must be active.
    if os.geteuid() == 0 and launcher().bwrap:
        assert report.missing == [], report.render()
        assert report.ok
