"""The rollout answer as readable terminal tables (input: the API's JSON answer)."""

from __future__ import annotations

from typing import Any


def pct(share: float) -> str:
    return f"{share * 100:.2f}%"


def short_pin(pin: str) -> str:
    return pin if len(pin) <= 20 else f"{pin[:16]}…"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out) + "\n"


def _slices(title: str, slices: list[dict[str, Any]]) -> str:
    if not slices:
        return ""
    rows = [
        [
            s["value"] or "(none)",
            str(s["devices"]),
            str(s["would_fail_devices"]),
            pct(s["would_fail_share"]),
            str(s["intercepted_devices"]),
        ]
        for s in slices
    ]
    return f"\n{title}\n" + table(
        [title.split(" by ")[-1], "devices", "would fail", "share", "intercepted"], rows
    )


def render_text(a: dict[str, Any]) -> str:
    out: list[str] = []
    filters = " ".join(f"{k}={v}" for k, v in a["filters"].items())
    out.append(f"rollout of {a['host']}  {a['since']} .. {a['until']}  {filters}".rstrip())
    names = ", ".join(f"{p['role']} {short_pin(p['sha256'])}" for p in a["pin_set"]["pins"])
    out.append(f"pin set {a['pin_set']['name']}: {names}")
    out.append(
        f"{a['reports']} reports, {a['devices']} devices, {a['networks']} networks "
        f"(answered from the {a['method']} in {a['query_seconds']:.2f}s)"
    )
    wf = a["would_fail"]
    out.append(
        f"would fail: {wf['would_fail_devices']} devices ({pct(wf['would_fail_share'])}); "
        f"behind interception: {wf['intercepted_devices']} ({pct(wf['interception_share'])})\n"
    )
    out.append("observed pins (leaf keys served)")
    rows = [
        [
            short_pin(p["pin"]),
            p["role"] + (" (interception)" if p["interception"] else ""),
            str(p["devices"]),
            pct(p["device_share"]),
            str(p["reports"]),
            str(p["networks"]),
            p["first_seen"],
            p["last_seen"],
        ]
        for p in a["pins"]
    ]
    out.append(
        table(
            ["pin", "role", "devices", "share", "reports", "networks", "first seen", "last seen"],
            rows,
        ).rstrip("\n")
    )
    if a["unobserved_candidates"]:
        out.append("candidate pins never served: " + ", ".join(a["unobserved_candidates"]))
    text = "\n".join(out) + "\n"
    text += _slices("would fail by app version", a["by_app_version"])
    text += _slices("would fail by platform", a["by_platform"])
    text += _slices("would fail by network", a["by_network"])
    for s in a["surprise_pins"]:
        text += (
            f"\nsurprise pin {s['pin']}: {s['devices']} devices, {s['networks']} networks, "
            f"{s['first_seen']} .. {s['last_seen']}\n"
        )
        for ev in s["evidence"]:
            text += (
                f"  sample {ev['received_at']} {ev['platform']} {ev['app_version']} "
                f"{ev['client_network']}: root {ev['root']}\n"
            )
            for c in ev["certificates"]:
                text += (
                    f"    {c['subject']}  issued by {c['issuer']}  "
                    f"valid {c['not_before']} .. {c['not_after']}\n"
                )
    text += _cohorts(a.get("cohorts") or [], a.get("cohort_gap"))
    v = a["verdict"]
    text += "\nverdict: " + ("READY" if v["ready"] else "NOT READY") + "\n"
    for r in v["reasons"]:
        text += f"  - {r['message']}\n"
    return text


def _cohorts(cohorts: list[dict[str, Any]], gap: float | None) -> str:
    """Staged enforcement: the enforced cohort against report-only devices."""
    if not any(c["cohort"] == "enforced" for c in cohorts):
        return ""
    rows = [
        [
            c["cohort"].replace("_", "-"),
            str(c["validations"]),
            str(c["mismatches"]),
            pct(c["mismatch_share"]),
        ]
        for c in cohorts
    ]
    out = "\nstaged enforcement: pin mismatches by cohort (interception apart)\n"
    out += table(["cohort", "validations", "mismatches", "share"], rows)
    if gap is not None:
        out += f"enforced cohort {gap * 100:+.2f} points against report-only\n"
    return out
