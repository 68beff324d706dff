"""The chain a TLS server serves: one handshake with SNI, no trust decision (pins are judged
here, not by the system's trust store), every certificate the server sent, leaf first.

Python's `ssl` exposes the peer's chain publicly from 3.13 (`get_unverified_chain`); 3.10 to
3.12 have the same method on the private `_sslobj` (pip's truststore relies on it too), which
returns `_ssl.Certificate` objects instead of DER bytes. Both are read here; an interpreter with
neither yields the leaf alone and says so.

Every failure is a `ChainError` with a `reason` from a small fixed set (metric label values)
and a message naming the address and what went wrong, never a traceback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from pinwatch.pins import spki_pin

# Why a handshake failed; bounded, because they are metric label values.
REASONS = ("dns", "refused", "unreachable", "timeout", "tls", "no_certificate")


class ChainError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ServedChain:
    """What one address served for one server name."""

    address: str
    port: int
    servername: str
    certificates: tuple[x509.Certificate, ...]
    complete: bool  # False: the interpreter could only give the leaf
    seconds: float  # connect plus handshake

    @property
    def pins(self) -> list[str]:
        return [spki_pin(cert) for cert in self.certificates]

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]


def parse_target(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address -> (host, port or None)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not HOST[:PORT]: {text!r}")
        port = rest[1:] or None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None  # a name, or an IPv6 address without a port
    if not host:
        raise ValueError(f"no host in {text!r}")
    if port is None:
        return host.lower().rstrip("."), None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1-65535, not {port!r} (in {text!r})")
    return host.lower().rstrip("."), int(port)


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


async def resolve(
    host: str,
    port: int,
    overrides: dict[str, list[str]] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109
) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6, sorted, no duplicates): the edges a
    client may be sent to. `overrides` (host -> addresses) replaces DNS, as curl --resolve."""
    if overrides and host in overrides:
        return sorted(set(overrides[host]))
    if is_address(host):
        return [host]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise ChainError("dns", f"cannot resolve {host}: no answer within {timeout:g}s") from None
    except socket.gaierror as exc:
        raise ChainError("dns", f"cannot resolve {host}: {exc.strerror}") from None
    return sorted({str(info[4][0]) for info in infos})


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # No trust decision here: the chain is judged against pins, and a chain the system would
    # refuse (a private root, an expired leaf) is exactly what must be seen and reported.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _where(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def fetch_chain(
    address: str,
    port: int,
    servername: str,
    timeout: float,  # noqa: ASYNC109
) -> ServedChain:
    """Connect to `address`, handshake with SNI `servername`, return the served chain."""
    where = _where(address, port)
    started = time.monotonic()
    sni = None if is_address(servername) else servername  # SNI carries names only (RFC 6066)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                address, port, ssl=_client_context(), server_hostname=sni or ""
            )
    except TimeoutError:
        raise ChainError(
            "timeout", f"{where}: no TLS handshake within {timeout:g}s (SNI {servername})"
        ) from None
    except ConnectionRefusedError:
        raise ChainError("refused", f"{where}: connection refused") from None
    except ssl.SSLError as exc:
        raise ChainError("tls", f"{where}: TLS handshake failed: {_ssl_reason(exc)}") from None
    except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
        raise ChainError(
            "tls", f"{where}: the server closed the connection during the TLS handshake"
        ) from None
    except OSError as exc:
        raise ChainError("unreachable", f"{where}: cannot connect: {exc.strerror or exc}") from None
    seconds = time.monotonic() - started
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der, complete = _peer_chain_der(ssl_object)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass  # closing is best effort: the chain is already read
    if not der:
        raise ChainError("no_certificate", f"{where}: the server sent no certificate")
    try:
        certificates = tuple(x509.load_der_x509_certificate(d) for d in der)
    except ValueError as exc:
        raise ChainError("tls", f"{where}: unreadable certificate from the server: {exc}") from None
    return ServedChain(address, port, servername, certificates, complete, seconds)


def _peer_chain_der(ssl_object: ssl.SSLObject | None) -> tuple[list[bytes], bool]:
    if ssl_object is None:
        return [], False
    public = getattr(ssl_object, "get_unverified_chain", None)
    if public is not None:  # Python 3.13+
        return [bytes(c) for c in public() or ()], True
    inner = getattr(ssl_object, "_sslobj", None)
    private = getattr(inner, "get_unverified_chain", None)
    if private is not None:  # Python 3.10-3.12
        import _ssl

        return [c.public_bytes(_ssl.ENCODING_DER) for c in private() or ()], True
    leaf = ssl_object.getpeercert(binary_form=True)
    return ([leaf] if leaf else []), False


def _ssl_reason(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None) or ""
    if reason in {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"}:
        return "the server does not speak TLS on this port (is it a plain-text port?)"
    if reason in {"UNEXPECTED_EOF_WHILE_READING"} or "EOF" in str(exc):
        return "the server closed the connection during the handshake"
    return reason or str(exc)


def load_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    """Certificates from a PEM bundle (one or more) or a single DER certificate, leaf first.
    Raises ValueError naming `source` and what is wrong."""
    if b"-----BEGIN" in data:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise ValueError(f"{source}: not a valid PEM certificate: {exc}") from None
        return certs
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ValueError(
            f"{source}: neither PEM (no -----BEGIN CERTIFICATE----- block) nor a DER certificate"
        ) from None


def read_certificates(path: Path, form: str) -> list[x509.Certificate]:
    """`--pem FILE` / `--der FILE`: every certificate in the file. ValueError when unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if form == "pem" and b"-----BEGIN" not in data:
        raise ValueError(f"{path}: no PEM block (-----BEGIN CERTIFICATE-----) found")
    if form == "der" and b"-----BEGIN" in data:
        raise ValueError(f"{path}: this is PEM, not DER: use --pem")
    return load_certificates(data, str(path))


def parse_resolve(values: list[str]) -> dict[str, list[str]]:
    """`--resolve HOST=ADDR[,ADDR...]` flags -> {host: [addresses]}; ValueError when malformed."""
    out: dict[str, list[str]] = {}
    for value in values:
        host, sep, addresses = value.partition("=")
        parts = [a.strip() for a in addresses.split(",") if a.strip()]
        if not sep or not host.strip() or not parts:
            raise ValueError(f"--resolve wants HOST=ADDR[,ADDR...], not {value!r}")
        for address in parts:
            if not is_address(address):
                raise ValueError(f"--resolve {value!r}: {address!r} is not an IP address")
        out.setdefault(host.strip().lower().rstrip("."), []).extend(parts)
    return out


@dataclass(frozen=True)
class Edge:
    """One address's outcome: the chain it served, or why there is none."""

    address: str
    chain: ServedChain | None = None
    error: ChainError | None = None


@dataclass(frozen=True)
class HostProbe:
    """Every edge of one host: the addresses it resolved to (at most `max_addresses`, the
    rest counted in `dropped`), or the resolution error."""

    host: str
    port: int
    edges: tuple[Edge, ...] = ()
    dropped: int = 0
    error: ChainError | None = None  # resolution failed: no edge was tried


async def probe_host(
    host: str,
    port: int,
    *,
    servername: str | None = None,
    timeout: float,  # noqa: ASYNC109
    max_addresses: int,
    overrides: dict[str, list[str]] | None = None,
    limit: asyncio.Semaphore | None = None,
) -> HostProbe:
    """Handshake with every address `host` resolves to, with SNI `servername` (default
    `host`), `limit` bounding handshakes in flight across calls."""
    try:
        addresses = await resolve(host, port, overrides, timeout)
    except ChainError as exc:
        return HostProbe(host, port, error=exc)
    if not addresses:
        return HostProbe(host, port, error=ChainError("dns", f"{host} has no address"))
    kept = addresses[:max_addresses]

    async def one(address: str) -> Edge:
        async def attempt() -> Edge:
            try:
                chain = await fetch_chain(address, port, servername or host, timeout)
                return Edge(address, chain=chain)
            except ChainError as exc:
                return Edge(address, error=exc)

        if limit is None:
            return await attempt()
        async with limit:
            return await attempt()

    edges = await asyncio.gather(*(one(a) for a in kept))
    return HostProbe(host, port, tuple(edges), dropped=len(addresses) - len(kept))
