"""The bytes of deploy/haproxy.cfg's `tcp-check send-binary`: one gRPC health check spoken as
raw HTTP/2 (HAProxy 2.6's http-check cannot send the binary body a gRPC call needs).

Run `python3 deploy/h2_health_check.py` to print them as hex (to check or regenerate the
config); the replica test imports `SERVING` and `request` to prove the config matches."""

from __future__ import annotations

PATH = b"/grpc.health.v1.Health/Check"
# The DATA payload of a SERVING answer: gRPC's 5-byte prefix (not compressed, length 2), then
# HealthCheckResponse{status: SERVING}, field 1 varint 1. NOT_SERVING ends in 02 instead.
SERVING = bytes.fromhex("00000000020801")


def _literal(index: int, value: bytes) -> bytes:
    """HPACK literal header field without indexing, its name from static-table `index`."""
    prefix = bytes([index]) if index < 15 else bytes([15, index - 15])
    return prefix + bytes([len(value)]) + value


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big")
            + payload)


def request(authority: bytes = b"localhost") -> bytes:
    """Preface, empty SETTINGS, HEADERS (END_HEADERS) and DATA (END_STREAM) on stream 1: a
    Check of the overall health (service "", the empty message)."""
    headers = (b"\x83"  # :method POST (static 3)
               + b"\x86"  # :scheme http (static 6)
               + _literal(4, PATH)  # :path
               + _literal(1, authority)  # :authority
               + _literal(31, b"application/grpc")  # content-type
               + b"\x00\x02te\x08trailers")  # te: trailers (new name)
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"")
            + _frame(1, 0x4, 1, headers) + _frame(0, 0x1, 1, b"\x00" * 5))


if __name__ == "__main__":
    print("send-binary", request().hex())
    print("expect binary", SERVING.hex())
