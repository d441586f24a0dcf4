"""Self-confinement of a sandbox worker, run once after every import and before any agent code.

Order matters: rlimits first (they bound everything after), then a private network namespace
(needs CAP_SYS_ADMIN, so before the uid drop), then no_new_privs (Landlock needs it once the
capabilities are gone), Landlock (no write anywhere, reads only under the interpreter and the
sandbox runtime), the uid/gid drop (clears every capability, empties the bounding set), and the
seccomp filter last, because it forbids the very syscalls the steps above use.

Each step is assumed to fail somewhere: it reports {"active": bool, "detail": str} instead of
raising, and `logbus doctor` shows the report. A step that is required by the host's config and
fails makes the worker refuse to run agent code (see worker_main).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
from typing import Any

Layer = dict[str, Any]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

CLONE_NEWNET = 0x40000000
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 4, 24, 38, 39
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446


def _ok(detail: str) -> Layer:
    return {"active": True, "detail": detail}


def _missing(detail: str) -> Layer:
    return {"active": False, "detail": detail}


def _errno_text() -> str:
    code = ctypes.get_errno()
    return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"


def set_rlimits(memory_bytes: int, cpu_seconds: int, nofile: int) -> Layer:
    limits = {
        "AS": (resource.RLIMIT_AS, memory_bytes),
        "CPU": (resource.RLIMIT_CPU, cpu_seconds),
        "NOFILE": (resource.RLIMIT_NOFILE, nofile),
        "FSIZE": (resource.RLIMIT_FSIZE, 0),  # no file may grow: writes to regular files fail
        "CORE": (resource.RLIMIT_CORE, 0),  # a crash must not dump agent data to disk
        "NPROC": (resource.RLIMIT_NPROC, 0),  # ignored for root; binds once the uid is dropped
    }
    failed = []
    for name, (which, value) in limits.items():
        try:
            resource.setrlimit(which, (value, value))
        except (OSError, ValueError) as exc:
            failed.append(f"{name}: {exc}")
    if failed:
        return _missing("; ".join(failed))
    return _ok(f"AS={memory_bytes >> 20}MiB CPU={cpu_seconds}s NOFILE={nofile} FSIZE=0 CORE=0 NPROC=0")


def _interfaces() -> list[str]:
    with open("/proc/self/net/dev", encoding="ascii") as handle:
        return [line.split(":", 1)[0].strip() for line in handle.readlines()[2:]]


def enter_network_namespace() -> Layer:
    """A namespace with only a downed loopback: no route to the host or anywhere else."""
    try:
        if _interfaces() == ["lo"]:
            return _ok("already in a private network namespace (only lo)")
    except OSError:
        pass
    if _libc.unshare(CLONE_NEWNET) != 0:
        return _missing(f"unshare(CLONE_NEWNET) failed: {_errno_text()}")
    try:
        names = _interfaces()
    except OSError as exc:
        return _missing(f"cannot verify the namespace: {exc}")
    return _ok("unshare(CLONE_NEWNET): only lo") if names == ["lo"] else _missing(f"interfaces {names}")


def set_no_new_privs() -> Layer:
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return _missing(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {_errno_text()}")
    return _ok("set") if _libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 else _missing("not set")


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


_FS_READ_FILE, _FS_READ_DIR = 1 << 2, 1 << 3


def apply_landlock(read_paths: list[str]) -> Layer:
    """Deny every filesystem right the kernel knows, except reading under `read_paths`."""
    abi = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 0:
        return _missing(f"kernel has no Landlock: {_errno_text()}")
    handled_fs = (1 << 13) - 1  # ABI 1: execute, write, read, remove, make-*
    handled_fs |= (1 << 13) if abi >= 2 else 0  # REFER
    handled_fs |= (1 << 14) if abi >= 3 else 0  # TRUNCATE
    handled_fs |= (1 << 15) if abi >= 5 else 0  # IOCTL_DEV
    attr = _RulesetAttr(handled_fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # TCP bind+connect; scopes
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _libc.syscall(
        SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
    )
    if ruleset < 0:
        return _missing(f"landlock_create_ruleset failed: {_errno_text()}")
    try:
        for path in read_paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a path that does not exist needs no rule
            try:
                access = _FS_READ_FILE | (_FS_READ_DIR if os.path.isdir(path) else 0)
                rule = _PathBeneath(access, fd)
                if (
                    _libc.syscall(
                        SYS_LANDLOCK_ADD_RULE,
                        ctypes.c_int(ruleset),
                        ctypes.c_int(1),
                        ctypes.byref(rule),
                        ctypes.c_uint32(0),
                    )
                    != 0
                ):
                    return _missing(f"landlock_add_rule({path}) failed: {_errno_text()}")
            finally:
                os.close(fd)
        if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return _missing(f"landlock_restrict_self failed: {_errno_text()}")
    finally:
        os.close(ruleset)
    scope = ", signals and abstract sockets scoped" if abi >= 6 else ""
    net = ", TCP bind/connect denied" if abi >= 4 else ""
    return _ok(f"ABI {abi}: read-only under {len(read_paths)} paths, no write anywhere{net}{scope}")


def drop_privileges(uid: int, gid: int) -> Layer:
    if os.getuid() != 0:
        return _missing(f"not root (uid {os.getuid()}): cannot switch to a separate uid")
    try:
        for cap in range(64):  # empty the bounding set so no later exec could regain a capability
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
                break
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        return _missing(f"cannot drop to uid {uid}: {exc}")
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no ptrace or /proc/<pid>/mem from the same uid
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        return _missing("uid/gid did not change")
    return _ok(f"uid={uid} gid={gid}, no groups, no capabilities, not dumpable")


# Syscalls a pure-Python batch transform never makes. EPERM is the default answer so that the
# (impossible) attempt surfaces as a PermissionError in the snippet with a line number; KILL is
# reserved for syscalls only a memory-corruption exploit would issue (kernel attack surface:
# ptrace, bpf, modules, keyrings, userfaultfd, io_uring), where continuing is the risk.
DENY_EPERM = (
    "socket",
    "socketpair",
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "recvfrom",
    "recvmsg",
    "recvmmsg",
    "getsockopt",
    "setsockopt",
    "shutdown",
    "fork",
    "vfork",
    "clone",
    "clone3",
    "execve",
    "execveat",
    "kill",
    "tkill",
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
    "mount",
    "umount2",
    "unshare",
    "setns",
    "chroot",
    "pivot_root",
    "mount_setattr",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setgroups",
    "setfsuid",
    "setfsgid",
    "capset",
    "prctl",
    "seccomp",
    "personality",
    "chdir",
    "fchdir",
    "creat",
    "openat2",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "mkdir",
    "mkdirat",
    "rmdir",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "chmod",
    "fchmod",
    "fchmodat",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "truncate",
    "mknod",
    "mknodat",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "utimensat",
    "memfd_create",
    "memfd_secret",
    "name_to_handle_at",
    "open_by_handle_at",
    "inotify_init",
    "inotify_init1",
    "fanotify_init",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    "setrlimit",
    "prlimit64",
    "sethostname",
    "setdomainname",
    "syslog",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "ioperm",
    "iopl",
    "vhangup",
)
DENY_KILL = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "lookup_dcookie",
    "uselib",
    "modify_ldt",
    "nfsservctl",
    "kcmp",
)
_O_WRONLY, _O_RDWR, _O_CREAT = 0o1, 0o2, 0o100
_PROT_EXEC = 0x4
_SCMP_ACT_ALLOW, _SCMP_ACT_KILL_PROCESS = 0x7FFF0000, 0x80000000
_SCMP_CMP_MASKED_EQ = 7


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def _load_libseccomp() -> ctypes.CDLL | str:
    # By soname, not ctypes.util.find_library (which runs ldconfig in a subprocess); before
    # Landlock, which makes the system library directories unreadable.
    try:
        return ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        return f"libseccomp.so.2 not loadable (Debian package libseccomp2): {exc}"


def apply_seccomp(lib: ctypes.CDLL | str) -> Layer:
    """Load the deny-list filter through libseccomp."""
    if isinstance(lib, str):
        return _missing(lib)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        return _missing("seccomp_init failed")
    eperm = 0x00050000 | errno.EPERM
    denied = 0
    try:

        def add(action: int, name: str, *conditions: tuple[int, int, int]) -> None:
            nonlocal denied
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                return  # not a syscall on this architecture
            args = (_ArgCmp * max(len(conditions), 1))(
                *[_ArgCmp(a, _SCMP_CMP_MASKED_EQ, m, v) for a, m, v in conditions]
            )
            rc = lib.seccomp_rule_add_array(ctx, action, number, len(conditions), args)
            if rc != 0:
                raise OSError(-rc, f"seccomp_rule_add({name}) failed")
            denied += 1

        for name in DENY_EPERM:
            add(eperm, name)
        for name in DENY_KILL:
            add(_SCMP_ACT_KILL_PROCESS, name)
        # Files may still be opened for reading (Landlock narrows where), never for writing.
        for flag in (_O_WRONLY, _O_RDWR, _O_CREAT):
            add(eperm, "open", (1, flag, flag))
            add(eperm, "openat", (2, flag, flag))
        # No new executable memory: everything native is loaded before the filter.
        add(eperm, "mmap", (2, _PROT_EXEC, _PROT_EXEC))
        add(eperm, "mprotect", (2, _PROT_EXEC, _PROT_EXEC))
        add(eperm, "pkey_mprotect", (2, _PROT_EXEC, _PROT_EXEC))
        rc = lib.seccomp_load(ctx)
        if rc != 0:
            return _missing(f"seccomp_load failed: {os.strerror(-rc)}")
    except OSError as exc:
        return _missing(str(exc))
    finally:
        lib.seccomp_release(ctx)
    return _ok(f"{denied} deny rules (EPERM; KILL for exploit-only syscalls)")


def confine(config: dict[str, Any]) -> dict[str, Layer]:
    """Apply every layer in order; returns the report keyed by layer name."""
    report: dict[str, Layer] = {}
    libseccomp = _load_libseccomp()
    report["rlimits"] = set_rlimits(
        int(config["memory_bytes"]), int(config["cpu_seconds"]), int(config.get("nofile", 16))
    )
    report["network_namespace"] = enter_network_namespace()
    report["no_new_privs"] = set_no_new_privs()
    report["landlock"] = apply_landlock([str(p) for p in config.get("read_paths", [])])
    uid = config.get("uid")
    report["separate_uid"] = (
        drop_privileges(int(uid), int(config.get("gid", uid)))
        if uid is not None
        else _missing("no uid assigned by the host")
    )
    report["seccomp"] = apply_seccomp(libseccomp)
    return report
