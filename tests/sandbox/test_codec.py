"""The frame codec: ints of every width travel exactly; what a hostile peer could put in an
extension is refused as a protocol error, never turned into a value or an exception of another kind."""

from __future__ import annotations

import msgpack
import pytest

from sandbox.runtime import codec


@pytest.mark.parametrize("value", [0, -1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64, -(2**63) - 1,
                                   12345678901234567890123, -(2**200), 2**14000 - 1, -(2**14000 - 1)])
def test_ints_of_any_width_up_to_the_bound_round_trip(value: int) -> None:
    message = {"events": [{"n": value, "deep": [{"n": value}]}]}
    assert codec.decode(codec.encode(message)[codec.HEADER.size:]) == message


def test_an_int_beyond_the_bound_is_refused_when_sent() -> None:
    with pytest.raises(TypeError, match="more than 14,000 bits"):
        codec.encode({"n": 2**14000})


@pytest.mark.parametrize(("code", "data"), [
    (2, b"1"),  # another extension type
    (codec.BIGINT, b"12"),  # msgpack carries small ints itself: no second spelling
    (codec.BIGINT, b"18446744073709551615"),  # 2**64 - 1 still fits msgpack
    (codec.BIGINT, b"-9223372036854775808"),
    (codec.BIGINT, b"0018446744073709551616"),  # leading zeros
    (codec.BIGINT, b"+18446744073709551616"),
    (codec.BIGINT, b" 18446744073709551616"),
    (codec.BIGINT, b"18446744073709551616\n"),
    (codec.BIGINT, b"1_8446744073709551616"),  # int() would take the underscore
    (codec.BIGINT, b"1" * 4216),  # past the bound: int() of it would be the host's work to do
    (codec.BIGINT, b""),
])
def test_hostile_extensions_are_protocol_errors(code: int, data: bytes) -> None:
    body = msgpack.packb({"values": [msgpack.ExtType(code, data)]})
    with pytest.raises(codec.ProtocolError):
        codec.decode(body)
