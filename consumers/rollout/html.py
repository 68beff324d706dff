"""A self-contained HTML report of a rollout answer for a go/no-go review: inline CSS and SVG
charts, no scripts, no external assets, every value escaped."""

from __future__ import annotations

from html import escape
from typing import Any

from consumers.rollout.text import pct

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#1d2330}
h1{font-size:1.5em;margin-bottom:.2em}
h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;margin:.5em 0}
td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}code{font-size:12px}
.verdict{padding:.8em 1em;border-radius:6px;font-weight:600;margin:1em 0}
.ready{background:#e3f6e8;color:#11602a}.notready{background:#fde8e8;color:#8a1616}
.muted{color:#667}svg text{font:12px system-ui,sans-serif}
"""

_ROLE_COLOR = {"primary": "#2e7d32", "backup": "#1565c0", "none": "#c62828"}


def _bars(items: list[tuple[str, float, str, str]], width: int = 900) -> str:
    """Horizontal bars: (label, share 0..1, caption, color)."""
    if not items:
        return '<p class="muted">nothing to chart</p>'
    row, label_w, bar_w = 22, 260, width - 260 - 120
    parts = [f'<svg width="{width}" height="{row * len(items) + 4}" role="img">']
    for i, (label, share, caption, color) in enumerate(items):
        y = i * row + 2
        w = max(1.0, min(share, 1.0) * bar_w) if share > 0 else 0
        parts.append(
            f'<text x="0" y="{y + 15}">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{bar_w}" height="16" fill="#f0f1f4"/>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="16" fill="{color}"/>'
            f'<text x="{label_w + bar_w + 8}" y="{y + 15}">{escape(caption)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _short(pin: str) -> str:
    return pin[:16] + "…" if len(pin) > 20 else pin


def _slice_section(title: str, slices: list[dict[str, Any]], bar: float) -> str:
    if not slices:
        return f"<h2>{escape(title)}</h2><p class='muted'>no would-fail devices</p>"
    items = [
        (
            s["value"] or "(none)",
            s["would_fail_share"],
            f"{pct(s['would_fail_share'])} of {s['devices']}",
            "#c62828" if s["would_fail_share"] > bar else "#2e7d32",
        )
        for s in slices
    ]
    rows = "".join(
        f"<tr><td>{escape(s['value'] or '(none)')}</td><td>{s['devices']}</td>"
        f"<td>{s['would_fail_devices']}</td><td>{pct(s['would_fail_share'])}</td>"
        f"<td>{s['intercepted_devices']}</td></tr>"
        for s in slices
    )
    return (
        f"<h2>{escape(title)}</h2>{_bars(items)}<table><tr><th>slice</th><th>devices</th>"
        f"<th>would fail</th><th>share</th><th>intercepted</th></tr>{rows}</table>"
    )


def render_html(a: dict[str, Any]) -> str:
    v = a["verdict"]
    bar = a["thresholds"]["max_would_fail_share"]
    reasons = "".join(f"<li>{escape(r['message'])}</li>" for r in v["reasons"])
    verdict = (
        '<div class="verdict ready">READY to widen enforcement</div>'
        if v["ready"]
        else f'<div class="verdict notready">NOT READY</div><ul>{reasons}</ul>'
    )
    pin_set = "".join(
        f"<tr><td><code>{escape(p['sha256'])}</code></td><td>{escape(p['role'])}</td>"
        f"<td>{escape(p['label'])}</td></tr>"
        for p in a["pin_set"]["pins"]
    )
    dist = _bars(
        [
            (
                f"{_short(p['pin'])} ({p['role']})",
                p["device_share"],
                f"{pct(p['device_share'])} · {p['devices']} dev",
                "#8e24aa" if p["interception"] else _ROLE_COLOR.get(p["role"], "#555"),
            )
            for p in a["pins"]
        ]
    )
    pin_rows = "".join(
        f"<tr><td><code>{escape(p['pin'])}</code></td><td>{escape(p['role'])}"
        f"{' (interception)' if p['interception'] else ''}</td><td>{p['devices']}</td>"
        f"<td>{pct(p['device_share'])}</td><td>{p['reports']}</td><td>{p['networks']}</td>"
        f"<td>{escape(p['first_seen'])}</td><td>{escape(p['last_seen'])}</td></tr>"
        for p in a["pins"]
    )
    surprises = ""
    for s in a["surprise_pins"]:
        samples = ""
        for ev in s["evidence"]:
            certs = "".join(
                f"<tr><td>{escape(c['subject'])}</td><td>{escape(c['issuer'])}</td>"
                f"<td>{escape(c['not_before'])}</td><td>{escape(c['not_after'])}</td></tr>"
                for c in ev["certificates"]
            )
            samples += (
                f"<p>sample {escape(ev['received_at'])} · {escape(ev['platform'])} "
                f"{escape(ev['app_version'])} · {escape(ev['client_network'])} · root "
                f"<b>{escape(ev['root'])}</b></p><table><tr><th>subject</th><th>issuer</th>"
                f"<th>not before</th><th>not after</th></tr>{certs}</table>"
            )
        surprises += (
            f"<h3><code>{escape(s['pin'])}</code></h3><p>{s['devices']} devices, "
            f"{s['networks']} networks, {s['reports']} reports, {escape(s['first_seen'])} .. "
            f"{escape(s['last_seen'])}</p>{samples or '<p class=muted>no sampled chain</p>'}"
        )
    wf = a["would_fail"]
    filters = ", ".join(f"{k}={v}" for k, v in a["filters"].items()) or "all apps"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>pinwatch rollout: {escape(a["host"])}</title><style>{_CSS}</style></head><body>
<h1>Pinning rollout review: {escape(a["host"])}</h1>
<p class="muted">{escape(a["since"])} .. {escape(a["until"])} · {escape(filters)} ·
pin set <b>{escape(a["pin_set"]["name"])}</b> · {a["reports"]} reports from {a["devices"]}
devices on {a["networks"]} networks</p>
{verdict}
<p>Would fail if enforced: <b>{wf["would_fail_devices"]}</b> devices
(<b>{pct(wf["would_fail_share"])}</b>, bar {pct(bar)}); behind TLS interception:
{wf["intercepted_devices"]} ({pct(wf["interception_share"])}).</p>
<h2>Pin set evaluated</h2>
<table><tr><th>sha256</th><th>role</th><th>label</th></tr>{pin_set}</table>
<h2>Observed pins: share of devices</h2>{dist}
<table><tr><th>pin</th><th>role</th><th>devices</th><th>share</th><th>reports</th>
<th>networks</th><th>first seen</th><th>last seen</th></tr>{pin_rows}</table>
{_slice_section("Would fail by app version", a["by_app_version"], bar)}
{_slice_section("Would fail by platform", a["by_platform"], bar)}
{_slice_section("Would fail by network prefix", a["by_network"], bar)}
<h2>Surprise pins</h2>{surprises or '<p class="muted">none</p>'}
<p class="muted">pinwatch rollout · answered from the {escape(a["method"])} in
{a["query_seconds"]:.2f}s</p>
</body></html>
"""
