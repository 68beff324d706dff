"""Signals that come before any client fails: the chain a host serves (`pinwatch pins`), a lint
of the pin policy (`pinwatch pins lint`), an active prober of every edge (`pinwatch probe`) and
a Certificate Transparency watch (`pinwatch ct watch`). Runtime code: it never imports the local
stack (Kafka, monitoring harness, test PKI)."""
