"""Sample payloads shared by every test, built from real certificates (pinwatch.certs).

One module so that ingest, consumer, alert and dashboard tests all send the same realistic
reports. Builders return plain dicts (the JSON a client would POST).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pinwatch.certs import Chain


def iso(ts: dt.datetime | None = None) -> str:
    ts = ts or dt.datetime.now(dt.UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def pin_validation(
    host: str,
    chain: Chain | None,
    *,
    result: str = "ok",
    enforced: bool | None = True,
    count: int = 1,
    with_chain: bool = True,
    report_id: str | None = None,
    observed_pins: list[str] | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "id": report_id or str(uuid.uuid4()),
        "type": "pin_validation",
        "at": iso(),
        "host": host,
        "port": 443,
        "result": result,
        "count": count,
        "observed_pins": observed_pins
        if observed_pins is not None
        else (chain.pins if chain else []),
    }
    if enforced is not None:
        report["enforced"] = enforced
    if chain is not None and with_chain:
        report["served_chain"] = chain.b64
    return report


def network_error(
    host: str, error: str = "timeout", *, count: int = 1, detail: str = "NSURLErrorTimedOut"
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": "network_error",
        "at": iso(),
        "host": host,
        "error": error,
        "detail": detail,
        "count": count,
    }


def native_batch(
    reports: list[dict[str, Any]],
    *,
    app: str,
    version: str = "5.2.0",
    platform: str = "ios",
    device: str | None = None,
    network: str = "wifi",
) -> dict[str, Any]:
    return {
        "app": {"id": app, "version": version, "platform": platform, "os_version": "18.1"},
        "device": {"id": device or f"device-{uuid.uuid4()}", "network": network},
        "sent_at": iso(),
        "reports": reports,
    }
