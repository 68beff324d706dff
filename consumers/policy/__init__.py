"""The owner of the live pin policy: levers applied and audited in ClickHouse
(`policy_audit`, migration 4), served to the ingest edge and to `pinwatch policy` through the
consumer's API (admin token). It lives in the consumer because in embedded mode only the
consumer process may open ClickHouse (docs/remote-policy.md says why the state lives there)."""
