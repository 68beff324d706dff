"""Reading RFC 6962's structures (TLS presentation language: big-endian integers, opaque
vectors with 1 to 3 length bytes) with every length checked, so a short record is a
`Truncated` error naming what was cut, never an IndexError."""

from __future__ import annotations


class Truncated(ValueError):
    pass


class Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if self.pos + n > len(self.data):
            raise Truncated(
                f"{self.what} ends inside {field}: needs {n} bytes at offset {self.pos}, "
                f"{len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def vector(self, length_bytes: int, field: str) -> bytes:
        return self.take(self.uint(length_bytes, f"the length of {field}"), field)

    @property
    def done(self) -> bool:
        return self.pos == len(self.data)


def u24(data: bytes) -> bytes:
    """An opaque<..2^24-1> vector: 3 length bytes, then the data."""
    return len(data).to_bytes(3, "big") + data
