"""Sources that feed the log from outside HTTP: a file followed like `tail -F`, and syslog listeners.

Each is a small object with `start()`/`stop()` that `logbus serve` runs beside the executor
(`--tail PATH=STREAM[:FORMAT]`, `--syslog-udp HOST:PORT=STREAM`, `--syslog-tcp HOST:PORT=STREAM`),
and a `status()` with its counters, written to the server's status snapshot.
"""

from stream.inputs import Format
from stream.sources.syslog import Framer, Protocol, SyslogError, SyslogSource, parse_listen_spec
from stream.sources.tail import FileTail, Start, TailError, parse_tail_spec

TailSpec = tuple[str, str, Format]  # (path, stream, format)
SyslogSpec = tuple[Protocol, str, int, str]  # (protocol, host, port, stream)

__all__ = ["FileTail", "Framer", "Protocol", "Start", "SyslogError", "SyslogSource", "SyslogSpec",
           "TailError", "TailSpec", "parse_listen_spec", "parse_tail_spec"]
