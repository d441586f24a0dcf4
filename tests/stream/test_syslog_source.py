"""Syslog listeners on real sockets (127.0.0.1, free ports), and `logbus serve --syslog-udp --tail`.

Samples are lines of loghub's Linux_2k.log and OpenSSH_2k.log: as sent by a BSD syslogd (RFC 3164,
with a `<PRI>`) and rewritten into RFC 5424 form. Every listener is stopped by the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.log import EmbeddedLog
from stream.sources.syslog import Framer, SyslogError, SyslogSource, parse_listen_spec

ROOT = Path(__file__).resolve().parents[2]
DATA = Path("/work/shared/data/loghub")
LINUX = (DATA / "Linux_2k.log").read_text().splitlines()
OPENSSH = (DATA / "OpenSSH_2k.log").read_text().splitlines()
SSH_FAILED = OPENSSH[5]  # Dec 10 06:55:48 LabSZ sshd[24200]: Failed password for invalid user webmaster ...
RFC5424 = ("<38>1 2024-12-10T06:55:48Z LabSZ sshd 24200 - - "
           + SSH_FAILED.split(": ", 1)[1])


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    with EmbeddedLog(tmp_path / "log") as opened:
        yield opened


@pytest.fixture
def sources() -> Iterator[list[SyslogSource]]:
    started: list[SyslogSource] = []
    yield started
    for source in started:
        source.stop()


def listen(log: EmbeddedLog, sources: list[SyslogSource], protocol: str, **options: Any) -> SyslogSource:
    source = SyslogSource(log, protocol, "127.0.0.1", 0, "syslog", **options)  # type: ignore[arg-type]
    source.start()
    sources.append(source)
    return source


def events(log: EmbeddedLog, stream: str = "syslog") -> list[dict[str, Any]]:
    if not log.has_stream("default", stream):
        return []
    table, _ = log.read("default", stream, 0, 1_000_000)
    return table.to_pylist() if table.num_rows else []


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def udp_send(address: tuple[str, int], *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams:
            sock.sendto(datagram, address)


def test_udp_datagrams_become_parsed_events_with_raw_and_peer(log: EmbeddedLog,
                                                              sources: list[SyslogSource]) -> None:
    source = listen(log, sources, "udp")
    assert source.address is not None
    bsd = f"<38>{LINUX[0].rstrip()}"
    udp_send(source.address, bsd.encode(), RFC5424.encode() + b"\n", b"hello, not syslog")
    wait_for(lambda: source.metrics["appended"] == 3)
    by_raw = {e["raw"]: e for e in events(log)}
    old, new, bad = by_raw[bsd], by_raw[RFC5424], by_raw["hello, not syslog"]
    assert (old["host"], old["app"], old["pid"], old["facility"], old["severity"]) == (
        "combo", "sshd(pam_unix)", 19939, "auth", "info")
    assert old["message"].startswith("authentication failure; logname= uid=0")
    assert old["timestamp"].endswith("-06-14T15:16:01Z")
    assert (new["timestamp"], new["host"], new["app"], new["pid"], new["msgid"]) == (
        "2024-12-10T06:55:48Z", "LabSZ", "sshd", 24200, None)
    assert new["message"] == "Failed password for invalid user webmaster from 173.234.31.186 port 38926 ssh2"
    assert bad["message"] == "hello, not syslog" and "RFC 5424" in bad["parse_error"]
    assert old["parse_error"] is None
    assert old["peer"].startswith("127.0.0.1:")
    assert source.metrics["malformed"] == 1 and source.metrics["received"] == 3
    assert log.settings("default", "syslog").time_field == "timestamp"


def test_tcp_octet_counting_and_newline_framing_on_one_connection(log: EmbeddedLog,
                                                                  sources: list[SyslogSource]) -> None:
    source = listen(log, sources, "tcp")
    assert source.address is not None
    counted = RFC5424.encode()
    lines = [f"<86>{line}" for line in OPENSSH[:3]]
    payload = (f"{len(counted)} ".encode() + counted + (lines[0] + "\n").encode()
               + (lines[1] + "\r\n").encode() + f"{len(lines[2])} {lines[2]}".encode())
    with socket.create_connection(source.address) as sock:
        for i in range(0, len(payload), 7):  # frames split across TCP segments
            sock.sendall(payload[i:i + 7])
    wait_for(lambda: source.metrics["appended"] == 4)
    got = events(log)
    assert [e["raw"] for e in got] == [RFC5424, *lines]
    assert all("parse_error" not in e for e in got)  # no column when nothing in the batch was malformed
    assert [e["app"] for e in got] == ["sshd"] * 4
    assert got[1]["facility"] == "authpriv" and got[1]["severity"] == "info"


def test_half_open_client_delivers_its_last_line_and_an_idle_one_blocks_nobody(
        log: EmbeddedLog, sources: list[SyslogSource]) -> None:
    source = listen(log, sources, "tcp")
    assert source.address is not None
    idle = socket.create_connection(source.address)
    idle.sendall(b"57 <38>1 2024-01-01T00:00:00Z h app - - - never fin")  # a frame that never completes
    with socket.create_connection(source.address) as sock:
        sock.sendall(f"<38>{LINUX[1]}".encode())  # no trailing LF
        sock.shutdown(socket.SHUT_WR)  # half-close: the server sees EOF, and closes its side
        assert sock.recv(1) == b""
    wait_for(lambda: source.metrics["appended"] == 1)
    assert events(log)[0]["message"] == "check pass; user unknown"
    started = time.monotonic()
    source.stop()  # the idle connection does not hold the listener up
    assert time.monotonic() - started < 5
    assert idle.recv(1) == b""  # closed by the server
    idle.close()
    assert source.metrics["truncated"] == 1 and source.metrics["connections"] == 2


def test_oversized_messages_are_dropped_and_counted(log: EmbeddedLog, sources: list[SyslogSource]) -> None:
    udp = listen(log, sources, "udp", max_message_bytes=200)
    tcp = listen(log, sources, "tcp", max_message_bytes=200)
    assert udp.address is not None and tcp.address is not None
    big = b"<38>" + LINUX[0].encode() + b" " + b"x" * 300
    udp_send(udp.address, big, f"<38>{LINUX[2]}".encode())
    with socket.create_connection(tcp.address) as sock:
        sock.sendall(f"{len(big)} ".encode() + big + big + b"\n" + f"<38>{LINUX[3]}\n".encode())
    wait_for(lambda: udp.metrics["appended"] == 1 and tcp.metrics["appended"] == 1)
    assert udp.metrics["oversize"] == 1 and tcp.metrics["oversize"] == 2
    # both listeners write to one stream, in either order; neither oversized message is there
    assert sorted(e["raw"] for e in events(log)) == sorted([f"<38>{LINUX[2]}", f"<38>{LINUX[3]}"])


def block_appends(source: SyslogSource) -> threading.Event:
    """Make the source's appends wait until the returned event is set (a slow disk)."""
    release = threading.Event()
    real = source._append

    def slow(batch: list[tuple[bytes, str]]) -> None:
        release.wait(30)
        real(batch)

    source._append = slow  # type: ignore[method-assign]
    return release


def test_udp_flood_over_the_buffer_bound_drops_and_counts(log: EmbeddedLog,
                                                          sources: list[SyslogSource]) -> None:
    source = listen(log, sources, "udp", max_buffer_messages=50, flush_messages=10)
    assert source.address is not None
    release = block_appends(source)
    for burst in range(6):  # paced, so the kernel's socket buffer does not drop any before we see them
        udp_send(source.address, *[f"<38>{LINUX[i]}".encode() for i in range(burst * 50, burst * 50 + 50)])
        time.sleep(0.05)
    wait_for(lambda: source.metrics["received"] == 300)
    assert source.status()["buffered"] <= 50
    release.set()
    wait_for(lambda: source.metrics["appended"] + source.metrics["dropped"] == 300)
    assert source.metrics["dropped"] >= 250 and source.metrics["appended"] == 300 - source.metrics["dropped"]
    assert len(events(log)) == source.metrics["appended"]


def test_tcp_flood_is_held_back_not_dropped(log: EmbeddedLog, sources: list[SyslogSource]) -> None:
    source = listen(log, sources, "tcp", max_buffer_messages=50, flush_messages=10)
    assert source.address is not None
    release = block_appends(source)
    payload = b"".join(f"<38>{LINUX[i]}\n".encode() for i in range(2000))
    sender = socket.create_connection(source.address)
    done = threading.Thread(target=sender.sendall, args=(payload,), daemon=True)
    done.start()
    wait_for(lambda: source.status()["buffered"] == 50)
    time.sleep(0.3)
    assert source.status()["buffered"] == 50  # the server stopped reading; the rest waits in the sender
    assert source.metrics["received"] <= 51
    release.set()
    done.join(30)
    sender.close()
    wait_for(lambda: source.metrics["appended"] == 2000)
    assert source.metrics["dropped"] == 0
    assert [e["raw"] for e in events(log)] == [f"<38>{LINUX[i]}" for i in range(2000)]


def test_framer_handles_split_length_prefixes_and_eof() -> None:
    framer = Framer(100)
    assert framer.feed(b"1") == []
    assert framer.feed(b"1 hello") == []
    assert [f.data for f in framer.feed(b" world")] == [b"hello world"]
    assert [f.data for f in framer.feed(b"<13>plain\n<13>tail")] == [b"<13>plain"]
    assert [f.data for f in framer.close()] == [b"<13>tail"]
    framer = Framer(100)
    assert framer.feed(b"20 short") == []
    assert [f.problem for f in framer.close()] == ["truncated"]


def test_listen_spec_parsing_and_errors(log: EmbeddedLog) -> None:
    assert parse_listen_spec("127.0.0.1:5514=syslog", "--syslog-udp") == ("127.0.0.1", 5514, "syslog")
    assert parse_listen_spec("[::1]:514=auth", "--syslog-tcp") == ("::1", 514, "auth")
    with pytest.raises(SyslogError, match="HOST:PORT=STREAM"):
        parse_listen_spec("127.0.0.1=syslog", "--syslog-udp")
    with pytest.raises(SyslogError, match="port 1-65535"):
        parse_listen_spec("127.0.0.1:70000=syslog", "--syslog-udp")
    busy = SyslogSource(log, "tcp", "127.0.0.1", 0, "syslog")
    busy.start()
    try:
        assert busy.address is not None
        with pytest.raises(SyslogError, match="cannot listen for syslog over tcp"):
            SyslogSource(log, "tcp", "127.0.0.1", busy.address[1], "syslog").start()
    finally:
        busy.stop()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_logbus_serve_with_syslog_udp_and_tail(tmp_path: Path) -> None:
    data, followed = tmp_path / "data", tmp_path / "app.log"
    followed.write_text("")
    port, udp_port = free_port(), free_port(socket.SOCK_DGRAM)
    output = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    command = [sys.executable, "-m", "server.cli", "serve", "--data", str(data), "--port", str(port),
               "--syslog-udp", f"127.0.0.1:{udp_port}=syslog", "--tail", f"{followed}=app"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        snapshot = data / "state" / "serve.json"
        wait_for(lambda: snapshot.exists() and "sources" in json.loads(snapshot.read_text() or "{}"), 60)
        udp_send(("127.0.0.1", udp_port), f"<38>{LINUX[0]}".encode())
        with open(followed, "a") as handle:
            handle.write("tailed line\n")
        with EmbeddedLog(data / "log", readonly=True) as reader:
            wait_for(lambda: len(events(reader, "syslog")) == 1 and len(events(reader, "app")) == 1, 30)
            assert events(reader, "syslog")[0]["host"] == "combo"
            assert events(reader, "app")[0]["message"] == "tailed line"
        wait_for(lambda: any(s.get("appended") == 1 for s in json.loads(snapshot.read_text())["sources"]), 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            output.close()
    assert code == 0, (tmp_path / "serve.log").read_text()
    state = list((data / "state" / "tail").glob("*.json"))
    assert len(state) == 1 and json.loads(state[0].read_text())["offset"] == len("tailed line\n")
