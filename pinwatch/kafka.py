"""How every pinwatch process connects to Kafka.

`client_args(settings)` is the one place the connection is described (bootstrap servers,
security protocol, the TLS context, the SASL credentials): ingest's producer, the consumer and
its dead-letter producer, topic administration, and the local stack's and benchmarks' clients
all pass it to aiokafka as it is.

`start_client(client, settings, what)` starts one of those clients with a bound. aiokafka tries
each bootstrap address once and then reports only "Unable to bootstrap from [...]": the reason
(an untrusted certificate, a refused password) went to its log and is gone. So when a start
fails, `diagnose` opens one connection to each address itself and turns what refused it into a
message that names the setting to check, without any secret in it. A start that takes longer
than `kafka_connect_timeout_seconds` (an address that swallows packets) is cut off the same way:
a process stops at start with a reason, never hangs in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, Protocol

from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from pinwatch.settings import Settings


class KafkaStartError(KafkaConnectionError):
    """Kafka cannot be used with these settings: the message says why and which `PINWATCH_*`
    setting to check. It never carries a password."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "Kafka cannot be reached"


class _Client(Protocol):
    async def start(self) -> None: ...


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The client TLS context: the CA bundle (or the system's), the client certificate if any,
    hostname checking as set. An unreadable file is a `KafkaStartError` naming its setting."""
    ca = settings.kafka_ssl_ca_file
    try:
        context = create_ssl_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise KafkaStartError(
            f"PINWATCH_KAFKA_SSL_CA_FILE ({ca}): cannot be read as PEM certificates "
            f"({_reason(exc)})"
        ) from None
    if settings.kafka_ssl_cert_file is not None:
        password = settings.kafka_ssl_key_password.get_secret_value()
        try:
            # A callable, even for no password: without one OpenSSL would ask for the key's
            # passphrase on the terminal, and a service would wait for it forever.
            context.load_cert_chain(
                str(settings.kafka_ssl_cert_file),
                str(settings.kafka_ssl_key_file),
                password=lambda: password,
            )
        except (OSError, ssl.SSLError) as exc:
            raise KafkaStartError(
                f"PINWATCH_KAFKA_SSL_CERT_FILE ({settings.kafka_ssl_cert_file}), "
                f"PINWATCH_KAFKA_SSL_KEY_FILE ({settings.kafka_ssl_key_file}) and "
                f"PINWATCH_KAFKA_SSL_KEY_PASSWORD: the client certificate and its key cannot be "
                f"loaded ({_reason(exc)})"
            ) from None
    if not settings.kafka_ssl_check_hostname:
        context.check_hostname = False
    return context


def client_args(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin): where Kafka is and
    how to connect to it."""
    args: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if uses_tls(settings):
        args["ssl_context"] = ssl_context(settings)
    if uses_sasl(settings):
        args["sasl_mechanism"] = settings.kafka_sasl_mechanism
        args["sasl_plain_username"] = settings.kafka_sasl_username
        args["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return args


async def start_client(client: _Client, settings: Settings, what: str) -> None:
    """`await client.start()`, bounded by kafka_connect_timeout_seconds. On failure the client
    is closed and `KafkaStartError` says why, naming `what` ("ingest's producer")."""
    timeout = settings.kafka_connect_timeout_seconds
    try:
        await asyncio.wait_for(client.start(), timeout)
        return
    except TimeoutError:
        failure = f"no answer within {timeout:g}s (PINWATCH_KAFKA_CONNECT_TIMEOUT_SECONDS)"
    except (KafkaError, OSError) as exc:
        failure = _reason(exc)
    await _close(client)
    why = await diagnose(settings)
    raise KafkaStartError(
        f"{what} could not connect to Kafka at {settings.kafka_bootstrap}: {why or failure}"
    )


async def _close(client: Any) -> None:
    stop = getattr(client, "stop", None) or getattr(client, "close", None)
    if stop is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stop(), 5)


def _addresses(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


async def diagnose(settings: Settings) -> str | None:
    """Why a connection to the bootstrap servers fails, as advice naming the setting to check;
    None when one address accepts a connection (the failure lies beyond the first connection)."""
    try:
        args = client_args(settings)
    except KafkaStartError as exc:
        return str(exc)
    timeout = settings.kafka_connect_timeout_seconds
    reasons = []
    for host, port in _addresses(settings.kafka_bootstrap) or [("?", 0)]:
        where = f"{host}:{port}"
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host,
                    port,
                    client_id="pinwatch-diagnose",
                    request_timeout_ms=int(timeout * 1000),
                    ssl_context=args.get("ssl_context"),
                    security_protocol=settings.kafka_security_protocol,
                    sasl_mechanism=args.get("sasl_mechanism"),
                    sasl_plain_username=args.get("sasl_plain_username"),
                    sasl_plain_password=args.get("sasl_plain_password"),
                ),
                timeout,
            )
        except BaseException as exc:  # noqa: BLE001 - every failure is explained, none raised
            if isinstance(exc, asyncio.CancelledError):
                raise
            reasons.append(explain(exc, where, settings))
            continue
        conn.close()
        return None
    # The most telling reason first: a refused certificate or password over "refused".
    reasons.sort(key=lambda reason: "PINWATCH_KAFKA_BOOTSTRAP" in reason)
    return reasons[0] if reasons else None


def explain(exc: BaseException, where: str, settings: Settings) -> str:
    """One failed connection to `where`, as what to check."""
    protocol = settings.kafka_security_protocol
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code == 62 or "match" in str(exc.verify_message).lower():
            return (
                f"the broker's certificate at {where} does not name {where.rsplit(':', 1)[0]} "
                f"({exc.verify_message}): check PINWATCH_KAFKA_BOOTSTRAP (use a name the "
                "certificate holds) or PINWATCH_KAFKA_SSL_CHECK_HOSTNAME"
            )
        source = settings.kafka_ssl_ca_file or "the system's trusted CAs"
        return (
            f"the broker's certificate at {where} is not trusted ({exc.verify_message}): check "
            f"PINWATCH_KAFKA_SSL_CA_FILE (now: {source}); it must hold the CA that signed the "
            "broker's certificate"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"the TLS handshake with {where} failed ({_reason(exc)}): check "
            f"PINWATCH_KAFKA_SECURITY_PROTOCOL (now {protocol}: does this listener speak TLS?) "
            "and, if the broker asks for a client certificate, PINWATCH_KAFKA_SSL_CERT_FILE "
            "and PINWATCH_KAFKA_SSL_KEY_FILE"
        )
    if isinstance(exc, SaslAuthenticationFailed):
        return (
            f"{where} refused the SASL credentials of user {settings.kafka_sasl_username!r} "
            f"({settings.kafka_sasl_mechanism}): check PINWATCH_KAFKA_SASL_USERNAME, "
            "PINWATCH_KAFKA_SASL_PASSWORD and PINWATCH_KAFKA_SASL_MECHANISM"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return (
            f"{where} does not offer SASL {settings.kafka_sasl_mechanism} ({_reason(exc)}): "
            "check PINWATCH_KAFKA_SASL_MECHANISM"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing listens at {where}: check PINWATCH_KAFKA_BOOTSTRAP"
    if isinstance(exc, TimeoutError):
        return (
            f"{where} did not answer within {settings.kafka_connect_timeout_seconds:g}s: check "
            f"PINWATCH_KAFKA_BOOTSTRAP and PINWATCH_KAFKA_SECURITY_PROTOCOL (now {protocol})"
        )
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
        return f"cannot connect to {where} ({_reason(exc)}): check PINWATCH_KAFKA_BOOTSTRAP"
    # The broker hung up during the first request: it expected another protocol (TLS where
    # plaintext came, SASL where none was offered, or the other way round), or, over TLS 1.3,
    # a client certificate it asks for and was not shown.
    advice = (
        f"{where} closed the connection ({_reason(exc)}): check "
        f"PINWATCH_KAFKA_SECURITY_PROTOCOL (now {protocol}); it must be the listener's"
    )
    if uses_tls(settings) and settings.kafka_ssl_cert_file is None:
        advice += (
            "; if the broker asks for a client certificate (mutual TLS), set "
            "PINWATCH_KAFKA_SSL_CERT_FILE and PINWATCH_KAFKA_SSL_KEY_FILE"
        )
    return advice


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # OpenSSL's short reason, on errors it raised
    if isinstance(exc, ssl.SSLError) and reason:
        return str(reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
