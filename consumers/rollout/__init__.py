"""Rollout analysis: before enforcing pins, which pins do clients really see, and what would fail
if a pin set were enforced?

`request` parses and validates a question, `sql` builds its ClickHouse queries (rollups first,
the raw table only where a rollup cannot answer), `analysis` runs them and assembles the answer,
`verdict` turns the answer into ready / not ready with every reason, `evidence` describes sampled
chains, `api` serves it all as `GET /v1/rollout/{host}`, `cli`, `text` and `html` are the
`pinwatch rollout` command and its two renderings.
"""
