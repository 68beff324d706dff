"""Counting what a chDB data directory holds from a short child process: chDB allows one data
directory per process, and the test process holds the session's, so the counts of another
(a consumer's that was killed, a stack's) are read by a child."""

from __future__ import annotations

import json
import subprocess
import sys

_COUNT_SCRIPT = """
import json, sys, clickhouse_connect
c = clickhouse_connect.get_client(dsn=sys.argv[1])
db = sys.argv[2]
q = lambda sql: c.query(sql.replace("DB", db)).result_rows[0][0]
print(json.dumps({
    "rows": q("SELECT count() FROM DB.reports"),
    "ids": q("SELECT uniqExact(id) FROM DB.reports"),
    "reports_sum": q("SELECT sum(count) FROM DB.reports"),
    "rollup_sum": q("SELECT sum(count) FROM DB.rollup_minute"),
    "hourly_sum": q("SELECT sum(count) FROM DB.evidence_hourly"),
    "failures": q("SELECT sum(count) FROM DB.rollup_minute WHERE result = 'pin_mismatch'"),
}))
"""


def clickhouse_counts(dsn: str, database: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _COUNT_SCRIPT, dsn, database],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
