"""Certificate Transparency watch (RFC 6962): follow logs chosen from a log list (JSON v3), read
their entries against signed tree heads, and raise a finding for every certificate or
precertificate issued for a policy host on a key no shipped app version pins.

Modules: merkle (hashes and proofs), tls (the TLS presentation-language records), entries
(leaf parsing), loglist, client (the HTTP API), state (per-log resume state and findings),
watch (the poll loop), cmd (`pinwatch ct watch`)."""


class CtError(Exception):
    """A log could not be read or did not verify. `reason` is a bounded metric label."""

    REASONS = (
        "unreachable",
        "http",
        "bad_response",
        "bad_signature",
        "truncated_entry",
        "bad_entry",
        "inconsistent_tree",
    )

    def __init__(self, reason: str, message: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(message)
        self.reason = reason
