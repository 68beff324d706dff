"""Reading a request body within limits: stop at the first byte over the limit, as sent and
after gzip decompression (a bomb is refused after at most max_decompressed_bytes of output)."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ingest.errors import ApiError
from ingest.metrics import Reason

if TYPE_CHECKING:
    from ingest.reports import Incoming


def _too_large(what: str, limit: int) -> ApiError:
    return ApiError(
        413, "too_large", f"{what} is larger than {limit} bytes", reason=Reason.TOO_LARGE
    )


def content_encoding(request: Incoming) -> bool:
    """True for gzip, False for identity; 415 for anything else."""
    value = (request.header(b"content-encoding") or "").strip().lower()
    if value in ("", "identity"):
        return False
    if value in ("gzip", "x-gzip"):
        return True
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Encoding {value!r} is not supported; send identity or gzip",
        reason=Reason.ENCODING,
    )


async def read_body(request: Incoming, max_body: int, max_decompressed: int) -> bytes:
    gzipped = content_encoding(request)
    declared = request.header(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise _too_large("request body", max_body)
    if not gzipped:
        first = await request.first_chunk()
        if first is not None:  # the whole body arrived at once: the common case
            if len(first) > max_body:
                raise _too_large("request body", max_body)
            return first
        return await _read_limited(request.stream(), max_body)
    return await _gunzip_limited(request.stream(), max_body, max_decompressed)


async def _read_limited(stream: AsyncIterator[bytes], max_body: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > max_body:
            raise _too_large("request body", max_body)
        chunks.append(chunk)
    return b"".join(chunks)


async def _gunzip_limited(stream: AsyncIterator[bytes], max_body: int, max_out: int) -> bytes:
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out: list[bytes] = []
    produced = 0
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > max_body:
                raise _too_large("request body", max_body)
            data = chunk
            while data and not decoder.eof:
                # max_length bounds the output of this step: a bomb never inflates past the limit
                piece = decoder.decompress(data, max_out - produced + 1)
                produced += len(piece)
                if produced > max_out:
                    raise _too_large("decompressed body", max_out)
                out.append(piece)
                data = decoder.unconsumed_tail
        if not decoder.eof:
            raise ApiError(400, "bad_json", "gzip body is truncated", reason=Reason.BAD_JSON)
    except zlib.error as exc:
        raise ApiError(
            400, "bad_json", f"body is not valid gzip: {exc}", reason=Reason.BAD_JSON
        ) from None
    return b"".join(out)
