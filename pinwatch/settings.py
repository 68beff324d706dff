"""The one typed settings object.

Every knob pinwatch has lives here, read from `PINWATCH_*` environment variables, with defaults
that run the whole pipeline on one machine. The settings table in docs/configuration.md is
generated from this class (`pinwatch settings --markdown`) and a test keeps the two in step, so a
field's `description` is its documentation.

Secrets (keys, tokens, DSNs, webhook URLs) are `SecretStr`: printing the settings, a log line or
an error shows them masked, and only the code that uses one calls `get_secret_value()`. With
`PINWATCH_ENV=production` the local defaults of secrets and the example policy (whose ingest keys
are public) are refused at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import certifi
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pinwatch.resources import EXAMPLE_POLICY

_DATA_DIR = Path(".pinwatch")
# Local defaults of secrets: fine on a laptop, refused in production (`env`).
LOCAL_DEVICE_HASH_KEY = "pinwatch-local-development-key"
LOCAL_ADMIN_TOKEN = "pinwatch-local-admin-token"


class SettingsError(ValueError):
    """Settings that cannot run: the message names each variable and what is wrong, and never
    carries a value (pydantic's own errors quote the input, secrets included)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PINWATCH_", extra="ignore")

    # --- shared -------------------------------------------------------------------------------
    env: Literal["local", "production"] = Field(
        "local",
        description="`production` refuses the local defaults of device_hash_key and admin_token "
        "and the example policy at start.",
    )
    policy_file: Path = Field(
        EXAMPLE_POLICY,
        description="Pin policy YAML: apps, keys, hosts, pins (default: the packaged example, "
        "whose ingest keys are public: local use only).",
    )
    data_dir: Path = Field(
        _DATA_DIR, description="Where local state lives (chDB data, logs, certs)."
    )
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    log_format: str = Field("json", description="`json` (one object per line) or `text`.")
    device_hash_key: SecretStr = Field(
        SecretStr(LOCAL_DEVICE_HASH_KEY),
        description="Secret for the keyed hash (HMAC-SHA256) of device ids; at least 32 "
        "characters in production (e.g. `openssl rand -base64 32`).",
    )
    public_roots_file: Path = Field(
        Path(certifi.where()),
        description="PEM bundle of publicly trusted roots for the rotation/interception split.",
    )

    # --- Kafka --------------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    kafka_topic: str = Field("pinwatch.reports", description="Topic that carries report batches.")
    kafka_dead_letter_topic: str = Field(
        "pinwatch.reports.dead-letter", description="Topic for records consumers cannot process."
    )
    kafka_partitions: int = Field(2, ge=1, description="Partitions when pinwatch creates topics.")
    kafka_replication_factor: int = Field(
        1,
        ge=1,
        description="Copies of each partition when pinwatch creates topics (3 in production).",
    )
    kafka_min_insync_replicas: int = Field(
        1,
        ge=1,
        description="Topic config `min.insync.replicas` when pinwatch creates topics: copies a "
        "write needs before Kafka acknowledges it (acks=all); 2 with replication 3 in "
        "production, so losing one broker loses no acknowledged report.",
    )
    kafka_retention_hours: int = Field(168, ge=1, description="Topic retention (retention.ms).")
    kafka_consumer_group: str = Field("pinwatch-consumers", description="Consumer group id.")
    kafka_metadata_max_age_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest time between refreshes of the topic's metadata, in ingest and the "
        "consumer: partitions added to the topic (`pinwatch topics --partitions`) get reports "
        "and are assigned (and read) within this time (aiokafka's own default is 5 minutes).",
    )
    kafka_produce_timeout_seconds: float = Field(
        5.0, gt=0, description="Longest an ingest request waits for Kafka before answering 503."
    )
    kafka_connect_timeout_seconds: float = Field(
        15.0,
        gt=0,
        description="Longest a Kafka client (ingest, consumer, topic admin) may take to connect "
        "at start; past it, or at a refused certificate or password, the command stops and "
        "says which setting to check.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How every Kafka client connects: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or "
        "SASL_SSL (a username and password over TLS: what managed Kafka services ask for).",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512",
        description="SASL mechanism with SASL_PLAINTEXT or SASL_SSL: PLAIN, SCRAM-SHA-256 or "
        "SCRAM-SHA-512.",
    )
    kafka_sasl_username: str = Field("", description="SASL username (SASL_* protocols).")
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""), description="SASL password (SASL_* protocols). A secret."
    )
    kafka_ssl_ca_file: Path | None = Field(
        None,
        description="PEM bundle of the CAs that may sign the brokers' certificates (SSL, "
        "SASL_SSL); empty: the system's trusted CAs.",
    )
    kafka_ssl_cert_file: Path | None = Field(
        None,
        description="Client certificate (PEM, chain) for brokers that ask for one (mutual TLS); "
        "with kafka_ssl_key_file.",
    )
    kafka_ssl_key_file: Path | None = Field(
        None, description="Private key (PEM) of kafka_ssl_cert_file."
    )
    kafka_ssl_key_password: SecretStr = Field(
        SecretStr(""), description="Password of an encrypted kafka_ssl_key_file. A secret."
    )
    kafka_ssl_check_hostname: bool = Field(
        True,
        description="The broker's certificate must name the host connected to (as bootstrap "
        "and the brokers advertise it); turn off only for brokers reached by another name.",
    )
    kafka_home: Path = Field(
        Path.home() / ".cache" / "pinwatch" / "kafka",
        description="Cache of the Kafka jars fetched from Maven Central (outside the repo).",
    )
    kafka_version: str = Field("4.1.1", description="Apache Kafka version the local broker runs.")
    kafka_controller_port: int = Field(9094, description="Local broker's KRaft controller port.")
    kafka_heap: str = Field("512m", description="Local broker's JVM heap (-Xmx).")

    # --- ingest -------------------------------------------------------------------------------
    ingest_host: str = Field("127.0.0.1", description="Ingest listen address.")
    ingest_port: int = Field(8787, description="Ingest listen port.")
    ingest_forwarded_allow_ips: str = Field(
        "",
        description="Reverse proxies whose X-Forwarded-For/-Proto ingest believes (comma-separated "
        "IPs or CIDRs, `*` for any). Empty: none, the connecting address is the client's. "
        "The client is the right-most X-Forwarded-For address that is not a named proxy.",
    )
    ingest_read_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest a request's headers and body may take to arrive, from its first "
        "byte (from connecting, for a connection's first request); slower ones are answered "
        "408 and the connection closed.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body as sent (compressed or not)."
    )
    max_decompressed_bytes: int = Field(
        4_194_304, ge=1024, description="Largest body after gzip decompression (bomb guard)."
    )
    max_reports_per_batch: int = Field(1000, ge=1, description="Most reports in one request.")
    max_pins_per_report: int = Field(
        16, ge=1, description="Most observed or known pins per report."
    )
    max_chain_certificates: int = Field(10, ge=1, description="Most certificates in one chain.")
    max_certificate_bytes: int = Field(
        16_384, ge=256, description="Largest single certificate (DER or PEM text)."
    )
    max_string_length: int = Field(
        256, ge=16, description="Longest free-text field (host, version, detail, ids)."
    )
    max_raw_payload_bytes: int = Field(
        32_768,
        ge=1024,
        description="Longest original payload (TrustKit, HPKP, NEL item) kept per report as "
        "evidence; longer ones are cut and marked.",
    )

    max_report_count: int = Field(
        1_000_000, ge=1, description="Largest `count` one report may stand for."
    )
    ingest_rate_limit_per_second: float = Field(
        5000.0, ge=0, description="Requests per second per app (token bucket); 0 turns it off."
    )
    ingest_rate_limit_burst: int = Field(
        10_000, ge=1, description="Requests an app may send at once before the rate applies."
    )
    ingest_device_rate_limit_per_second: float = Field(
        1.0,
        ge=0,
        description="Requests per second per device (the keyed device hash; formats without a "
        "device id, HPKP and NEL, are not limited by it), as a token bucket; beyond it 429 "
        "with Retry-After. Checked after the body is parsed. 0 turns it off.",
    )
    ingest_device_rate_limit_burst: int = Field(
        60,
        ge=1,
        description="Requests one device may send at once before its rate applies (reports "
        "queued while offline, retries).",
    )
    ingest_network_rate_limit_per_second: float = Field(
        1000.0,
        ge=0,
        description="Requests per second per client network (/24 or /48 of the client address: "
        "name your load balancer in ingest_forwarded_allow_ips, or all clients are one "
        "network), as a token bucket; beyond it 429 with Retry-After. Checked before the body "
        "is read. High by default: a carrier's NAT puts many devices behind one prefix. 0 "
        "turns it off.",
    )
    ingest_network_rate_limit_burst: int = Field(
        10_000, ge=1, description="Requests one client network may send at once."
    )
    ingest_rate_limit_max_keys: int = Field(
        100_000,
        ge=1,
        description="Most devices, and most networks, whose rate ingest remembers (about 200 "
        "bytes each: 20 MB per limit when full). When full, the least recently seen is "
        "forgotten; it starts with a full "
        "burst if it comes back.",
    )
    ingest_retry_after_seconds: int = Field(
        5, ge=1, description="`Retry-After` sent with 503 (Kafka down or slow) answers."
    )
    kafka_max_message_bytes: int = Field(
        900_000,
        ge=65_536,
        description="Largest Kafka message ingest writes (below the broker's ~1 MB default); "
        "bigger batches are split into several messages.",
    )
    kafka_compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = Field(
        "none",
        description="Compression of ingest's Kafka messages: none, gzip, lz4, zstd or snappy "
        "(consumers read any).",
    )
    ingest_max_pending_bytes: int = Field(
        67_108_864,
        ge=1_048_576,
        description="Records waiting for Kafka acknowledgement, at most; beyond it ingest "
        "answers 503 instead of queueing.",
    )
    ingest_ready_max_age_seconds: float = Field(
        10.0, gt=0, description="/readyz fails when Kafka last answered longer ago than this."
    )

    # --- consumer -----------------------------------------------------------------------------
    consumer_host: str = Field("127.0.0.1", description="Consumer metrics/query API address.")
    consumer_port: int = Field(9787, description="Consumer metrics/query API port.")
    clickhouse_dsn: SecretStr = Field(
        SecretStr(""),
        description="`chdb:///path` (embedded) or `http(s)://user:password@host:8123` (a secret: "
        "it may carry the password). Empty: chDB in data_dir.",
    )
    clickhouse_database: str = Field("pinwatch", description="ClickHouse database name.")
    clickhouse_cluster: str = Field(
        "",
        description="ClickHouse cluster (its remote_servers name) the schema lives on: ON CLUSTER "
        "DDL, Replicated tables per shard, Distributed tables sharded by device hash, inserts "
        "in the foreground. Empty: a single node (and chDB).",
    )
    migrate_lock_timeout_seconds: float = Field(
        120.0, gt=0, description="Longest `pinwatch migrate` waits for another migrator's lock."
    )
    retention_days: int = Field(30, ge=1, description="TTL of raw reports in ClickHouse.")
    # 50,000 rows / 48 MiB measured 15-30 % more reports/s than 20,000 / 16 MiB (fewer inserts,
    # each paying its views' fixed cost); a batch holds about twice its bytes in memory, and two
    # live at once (one inserting, one filling): about 200 MB at most.
    batch_max_rows: int = Field(
        50_000, ge=1, description="Flush an insert batch at this many rows."
    )
    batch_max_bytes: int = Field(
        50_331_648, ge=1024, description="Flush an insert batch at this many encoded bytes."
    )
    batch_max_seconds: float = Field(1.0, gt=0, description="Flush an insert batch at this age.")
    metrics_max_app_versions: int = Field(
        5, ge=1, description="Most recent app versions per app kept as metric labels; rest `other`."
    )
    dedup_window_seconds: float = Field(
        86_400.0,
        gt=0,
        description="A report id (per app) seen again within this window is a client retry: "
        "dropped, not stored or counted twice (in-memory set, backed by a ClickHouse lookup).",
    )
    dedup_max_ids: int = Field(
        1_000_000, ge=1, description="Most report ids kept in the consumer's in-memory dedup set."
    )
    admin_token: SecretStr = Field(
        SecretStr(LOCAL_ADMIN_TOKEN),
        description="Bearer token for the query API (/v1/rollout); set it in production.",
    )
    commit_interval_seconds: float = Field(
        1.0, gt=0, description="Commit consumer offsets (of inserted batches) at most this often."
    )
    clickhouse_retry_max_seconds: float = Field(
        10.0, gt=0, description="Longest pause between retries of a failed insert (backoff cap)."
    )
    dead_letter_max_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Consumer stops when more than this share of a window's records is "
        "dead-lettered (and at least dead_letter_min_records were).",
    )
    dead_letter_min_records: int = Field(
        100, ge=1, description="Dead letters in one window before the ratio limit can stop it."
    )
    dead_letter_window_seconds: float = Field(
        60.0, gt=0, description="Window over which the dead-letter limit is evaluated."
    )
    evidence_per_pin_hour: int = Field(
        5, ge=0, description="Full chains kept per host, observed leaf pin and hour (sampled)."
    )
    failing_refresh_seconds: float = Field(
        5.0,
        gt=0,
        description="How often the pinwatch_failing_* gauges are read back from ClickHouse "
        "(a term of time to page, docs/alerting.md).",
    )

    # --- rollout analysis ---------------------------------------------------------------------
    rollout_default_since: str = Field(
        "7d", description="Window of `pinwatch rollout` when --since is not given (30m, 24h, 7d)."
    )
    rollout_max_would_fail_share: float = Field(
        0.001,
        ge=0,
        le=1,
        description="Verdict bar: most devices (share) whose served chain the pin set would "
        "reject, interception excluded; also applied to each app version and platform.",
    )
    rollout_min_devices: int = Field(
        1000, ge=1, description="Verdict: fewer distinct devices than this is too few to judge."
    )
    rollout_min_group_devices: int = Field(
        20, ge=1, description="Smallest app version or platform the per-group bar is applied to."
    )
    rollout_surprise_min_networks: int = Field(
        3, ge=1, description="Verdict: a surprise pin (public chain) seen from this many networks."
    )
    rollout_max_interception_share: float = Field(
        0.02, ge=0, le=1, description="Verdict bar: most devices (share) behind interception."
    )
    rollout_max_pins: int = Field(
        50, ge=1, description="Most observed pins one rollout answer lists (by devices)."
    )
    rollout_max_networks: int = Field(
        20, ge=1, description="Most network prefixes in the would-fail breakdown (worst first)."
    )
    rollout_evidence_samples: int = Field(
        3, ge=1, le=20, description="Sample evidence chains shown per surprise pin."
    )
    rollout_query_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest `pinwatch rollout` waits for the query API."
    )

    # --- prober and pin lint -----------------------------------------------------------------
    probe_host: str = Field("127.0.0.1", description="`pinwatch probe` metrics listen address.")
    probe_port: int = Field(9788, description="`pinwatch probe` metrics port (/metrics).")
    # 15 s: with a 15 s scrape and evaluation and the 10 s page group_wait, an edge serving an
    # unpinned key pages within 55 s at worst (docs/prober.md).
    probe_interval_seconds: float = Field(
        15.0, gt=0, description="`pinwatch probe`: seconds between two rounds over every edge."
    )
    probe_timeout_seconds: float = Field(
        5.0, gt=0, description="Longest one TCP connect plus TLS handshake may take (probe, pins)."
    )
    probe_max_addresses_per_host: int = Field(
        16, ge=1, description="Most addresses (edges) probed per host; the rest are logged."
    )
    probe_concurrency: int = Field(
        16, ge=1, description="Handshakes `pinwatch probe` runs at once."
    )
    probe_resolve: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Addresses to use instead of DNS, per host (JSON: {"api.acme.com": '
        '["192.0.2.1"]}), as curl --resolve; for staging edges and tests.',
    )
    lint_expiry_days: int = Field(
        30, ge=0, description="`pins lint --probe`: a served leaf expiring within this is an error."
    )

    # --- Certificate Transparency watch -------------------------------------------------------
    ct_log_list_file: Path | None = Field(
        None, description="Log list JSON (v3 format) to read logs from; empty: ct_log_list_url."
    )
    ct_log_list_url: str = Field(
        "https://www.gstatic.com/ct/log_list/v3/log_list.json",
        description="Where the log list (JSON v3) is fetched when ct_log_list_file is empty.",
    )
    ct_logs: list[str] = Field(
        default_factory=list,
        description="Log URLs to follow (JSON list); empty: every usable or qualified log listed.",
    )
    ct_state_dir: Path | None = Field(
        None, description="Per-log resume state of `ct watch`; empty: data_dir/ct."
    )
    ct_start_at_beginning: bool = Field(
        False,
        description="A log seen for the first time is read from index 0; false: from its "
        "current size (only certificates logged from now on).",
    )
    ct_poll_interval_seconds: float = Field(
        60.0, gt=0, description="`ct watch`: seconds between two polls of every log."
    )
    ct_max_entries_per_poll: int = Field(
        2000, ge=1, description="Most entries read from one log in one poll (the rest: next poll)."
    )
    ct_entries_per_request: int = Field(
        256, ge=1, le=1024, description="Entries asked for in one get-entries request."
    )
    ct_max_response_bytes: int = Field(
        33_554_432, ge=65_536, description="Largest answer read from a log (get-entries batches)."
    )
    ct_timeout_seconds: float = Field(
        15.0, gt=0, description="Longest one request to a log may take."
    )
    ct_max_findings: int = Field(
        200, ge=1, description="Unpinned-key certificates `ct watch` keeps (newest first)."
    )
    ct_host: str = Field("127.0.0.1", description="`pinwatch ct watch` metrics listen address.")
    ct_port: int = Field(9789, description="`pinwatch ct watch` metrics port (/metrics).")

    # --- remote policy: the signed document, its keys and the levers -------------------------
    policy_signing_key_file: Path | None = Field(
        None,
        description="PEM Ed25519 private key the ingest edge signs policy documents with; "
        "empty: data_dir/policy-signing-key.pem (`pinwatch up` and `demo` create it). Never in "
        "the repository.",
    )
    policy_signing_key: SecretStr = Field(
        SecretStr(""),
        description="The signing key's PEM text itself, instead of a file (a secret); set one of "
        "the two.",
    )
    policy_extra_public_key_files: list[Path] = Field(
        default_factory=list,
        description="More keys /v1/policy/keys publishes beside the signing key (PEM, public or "
        "private; JSON list): the next key before a rotation, the previous one after it.",
    )
    policy_owner_url: str = Field(
        "",
        description="Base URL of the process that owns the live policy state (the consumer's "
        "API, admin token): the edge polls it, `pinwatch policy` calls it. Empty: "
        "http://consumer_host:consumer_port.",
    )
    policy_state_poll_seconds: float = Field(
        1.0, gt=0, le=4, description="How often the edge asks the owner for the live state."
    )
    policy_state_cache_file: Path | None = Field(
        None,
        description="The edge's copy of the last live state it got, served after a restart "
        "while the owner is away; empty: data_dir/policy-state.json.",
    )
    policy_refresh_seconds: int = Field(
        300,
        ge=1,
        description="How often clients fetch their policy document (`refresh_seconds` in it): a "
        "kill switch reaches every client within about this plus the cache max-age.",
    )
    policy_document_ttl_seconds: int = Field(
        604_800,
        ge=60,
        description="A document expires this long after it is issued (`exp`); clients keep "
        "their last valid one until then.",
    )
    policy_cache_max_age_seconds: int = Field(
        30, ge=0, description="`Cache-Control: max-age` of /v1/policy/{app} and /v1/policy/keys."
    )
    policy_owner_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest the edge or a `pinwatch policy` command waits for the owner.",
    )

    # --- monitoring stack ---------------------------------------------------------------------
    prometheus_port: int = Field(9090, description="Local Prometheus port.")
    alertmanager_port: int = Field(9093, description="Local Alertmanager port.")
    prometheus_scrape_interval_seconds: float = Field(
        15.0, gt=0, description="Local Prometheus scrape interval (part of time to page)."
    )
    prometheus_evaluation_interval_seconds: float = Field(
        15.0, gt=0, description="Local Prometheus rule evaluation interval (part of time to page)."
    )
    alert_pagerduty_routing_key_file: str = Field(
        "",
        description="File holding the PagerDuty Events v2 routing key for pages; empty: none.",
    )
    alert_opsgenie_api_key_file: str = Field(
        "", description="File holding the Opsgenie API key for pages; empty: no Opsgenie."
    )
    alert_oncall_webhook_url: SecretStr = Field(
        SecretStr(""),
        description="Webhook that also receives pages (chat, paging bridge); empty: none. A "
        "secret: webhook URLs carry tokens.",
    )
    alert_webhook_url: SecretStr = Field(
        SecretStr(""),
        description="Webhook for ticket and info alerts; empty: they stay in Alertmanager.",
    )
    runbook_url: str = Field(
        "https://github.com/pinwatch/pinwatch/blob/main/docs/runbook.md",
        description="Where docs/runbook.md is published (absolute URL): alerts' `runbook_url`, "
        "dashboard links and the Kubernetes monitoring objects point here. Read by "
        "`python -m alerts.generate` and `python -m dashboards.generate`: regenerate after "
        "changing it.",
    )
    alert_heartbeat_url: SecretStr = Field(
        SecretStr(""),
        description="Dead man's switch: URL the always-firing PinwatchWatchdog is posted to "
        "every minute (a heartbeat service that alarms when it stops); empty: none. Secret.",
    )

    # --- simulator and demo -------------------------------------------------------------------
    simulate_pki_dir: Path | None = Field(
        None,
        description="Keys the simulator's servers use; empty: the demo PKI shipped with the "
        "local stack (devstack/demo_pki), which the example policy pins.",
    )
    simulate_max_devices: int = Field(
        100_000, ge=1, description="Most simulated devices one `pinwatch simulate` may run."
    )
    simulate_max_seconds: float = Field(
        3600.0, gt=0, description="Longest `pinwatch simulate` run (--duration bound)."
    )
    simulate_max_requests: int = Field(
        1_000_000, ge=1, description="Most HTTP requests one simulation sends."
    )
    demo_steady_seconds: float = Field(
        30.0, gt=0, description="`pinwatch demo`: steady traffic before the rotation."
    )
    demo_timeout_seconds: float = Field(
        600.0, gt=0, description="`pinwatch demo`: longest wait for the page after the rotation."
    )

    @field_validator(
        "kafka_ssl_ca_file",
        "kafka_ssl_cert_file",
        "kafka_ssl_key_file",
        "ct_log_list_file",
        "ct_state_dir",
        "simulate_pki_dir",
        mode="before",
    )
    @classmethod
    def _empty_path_is_unset(cls, value: Any) -> Any:
        # `PINWATCH_X=` in an environment file means "not set", as the descriptions say; pydantic
        # would make it Path("."), the current directory.
        return None if value == "" else value

    # --- the local stack's supervisor (`pinwatch up`) ------------------------------------------
    stack_restart_initial_seconds: float = Field(
        1.0,
        gt=0,
        description="`pinwatch up`: wait before starting a component that exited; doubles with "
        "each exit or failed start in a row.",
    )
    stack_restart_max_seconds: float = Field(
        30.0,
        gt=0,
        description="`pinwatch up`: longest wait between two starts of a component that keeps "
        "exiting (it is tried again for as long as `up` runs).",
    )
    stack_restart_reset_after_seconds: float = Field(
        60.0,
        gt=0,
        description="`pinwatch up`: a component that ran this long before it exited is "
        "restarted after the initial wait again (shorter runs count as a crash loop).",
    )

    @field_validator("runbook_url")
    @classmethod
    def _absolute_url(cls, value: str) -> str:
        # A relative link opens nowhere from Grafana, a page or a PagerDuty incident.
        if not value.startswith(("https://", "http://")) or "#" in value:
            raise ValueError("must be an absolute http(s) URL without a #fragment")
        return value

    @model_validator(mode="after")
    def _kafka_connection_is_whole(self) -> Settings:
        # Half a configuration would connect differently from what was meant (a CA file with
        # PLAINTEXT: no TLS at all), or fail later with a less clear error than this one.
        problems = []
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()
        ):
            problems.append(
                f"PINWATCH_KAFKA_SASL_USERNAME and PINWATCH_KAFKA_SASL_PASSWORD: both are needed "
                f"with PINWATCH_KAFKA_SECURITY_PROTOCOL={protocol}"
            )
        tls_files = {
            "PINWATCH_KAFKA_SSL_CA_FILE": self.kafka_ssl_ca_file,
            "PINWATCH_KAFKA_SSL_CERT_FILE": self.kafka_ssl_cert_file,
            "PINWATCH_KAFKA_SSL_KEY_FILE": self.kafka_ssl_key_file,
        }
        given = [name for name, value in tls_files.items() if value is not None]
        if given and not protocol.endswith("SSL"):
            problems.append(
                f"{', '.join(given)}: set, but PINWATCH_KAFKA_SECURITY_PROTOCOL={protocol} does "
                "not use TLS (SSL or SASL_SSL)"
            )
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            problems.append(
                "PINWATCH_KAFKA_SSL_CERT_FILE and PINWATCH_KAFKA_SSL_KEY_FILE: give both or neither"
            )
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            problems.append(
                f"PINWATCH_KAFKA_MIN_INSYNC_REPLICAS ({self.kafka_min_insync_replicas}) is above "
                f"PINWATCH_KAFKA_REPLICATION_FACTOR ({self.kafka_replication_factor}): Kafka "
                "would refuse every write"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _production_refuses_local_defaults(self) -> Settings:
        if self.env != "production":
            return self
        problems = []
        key = self.device_hash_key.get_secret_value()
        if key == LOCAL_DEVICE_HASH_KEY or len(key) < 32:
            problems.append(
                "PINWATCH_DEVICE_HASH_KEY: the local default or shorter than 32 characters; "
                "set a long random secret (`openssl rand -base64 32`) and keep it: changing it "
                "changes every device hash"
            )
        if self.admin_token.get_secret_value() in ("", LOCAL_ADMIN_TOKEN):
            problems.append("PINWATCH_ADMIN_TOKEN: the local default; set a random token")
        if self.policy_file.resolve() == EXAMPLE_POLICY.resolve():
            problems.append(
                "PINWATCH_POLICY_FILE: the packaged example policy, whose ingest keys are "
                "public; point it at your own policy"
            )
        if problems:
            raise ValueError(
                "refused in production (PINWATCH_ENV=production): " + "; ".join(problems)
            )
        return self

    @model_validator(mode="after")
    def _one_signing_key(self) -> Settings:
        if self.policy_signing_key.get_secret_value() and self.policy_signing_key_file:
            raise ValueError(
                "PINWATCH_POLICY_SIGNING_KEY and PINWATCH_POLICY_SIGNING_KEY_FILE are both set; "
                "set one"
            )
        return self

    @property
    def policy_signing_key_path(self) -> Path:
        return self.policy_signing_key_file or self.data_dir / "policy-signing-key.pem"

    @property
    def policy_state_cache_path(self) -> Path:
        return self.policy_state_cache_file or self.data_dir / "policy-state.json"

    @property
    def policy_owner(self) -> str:
        return (
            self.policy_owner_url or f"http://{self.consumer_host}:{self.consumer_port}"
        ).rstrip("/")

    @property
    def clickhouse_url(self) -> str:
        """The DSN to connect with. It may hold a password: show `clickhouse_shown` instead."""
        dsn = self.clickhouse_dsn.get_secret_value()
        return dsn or f"chdb:///{(self.data_dir / 'chdb').resolve()}"

    @property
    def clickhouse_shown(self) -> str:
        return shown(self.clickhouse_url)

    def shown(self) -> dict[str, str]:
        """Every setting as `PINWATCH_*` variables for people to read: secrets masked."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = shown(value.get_secret_value())
            else:
                text = str(value)
            out[f"PINWATCH_{name.upper()}"] = text
        return out

    def env_vars(self, names: list[str]) -> dict[str, str]:
        """These settings as `PINWATCH_*` variables with their real values, secrets included: for
        a child process's environment only, never for printing."""
        out = {}
        for name in names:
            value = getattr(self, name)
            if value is None:  # unset: the child falls back to the same default
                continue
            text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            out[f"PINWATCH_{name.upper()}"] = text
        return out


def shown(secret: str) -> str:
    """A secret as it may be shown: a URL keeps its scheme, user and host (which server, not
    which password or token), anything else is `***`; empty stays empty."""
    if not secret:
        return ""
    try:
        parts = urlsplit(secret)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "***"
    if not parts.scheme or (not host and parts.scheme != "chdb"):
        return "***"
    if parts.scheme == "chdb":  # a local path, no credentials
        return secret
    user = f"{parts.username}:***@" if parts.username else ""
    where = f"{host}:{port}" if port else str(host)
    rest = "/***" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{user}{where}{rest}"


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and `overrides`), or `SettingsError` naming each bad
    variable without quoting any value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            names = [str(p) for p in err["loc"] if isinstance(p, str)]
            where = ", ".join(f"PINWATCH_{n.upper()}" for n in names)
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None


CONFIGURATION_DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
_BEGIN, _END = "<!-- settings:begin -->\n", "<!-- settings:end -->"


def write_docs_table(doc: Path = CONFIGURATION_DOC) -> bool:
    """Replace the table between docs/configuration.md's settings markers; True when it
    changed."""
    text = doc.read_text()
    head, rest = text.split(_BEGIN, 1)
    _, tail = rest.split(_END, 1)
    new = head + _BEGIN + settings_markdown() + _END + tail
    if new != text:
        doc.write_text(new)
    return new != text


_SHOWN_DEFAULTS = {
    "kafka_home": "~/.cache/pinwatch/kafka",
    "public_roots_file": "certifi",
    "policy_file": "pinwatch/examples/policy.example.yaml",
}


def settings_markdown() -> str:
    """The settings table of docs/configuration.md: one row per setting, generated so it cannot
    drift from the code."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):  # the local defaults are public; empty shows empty
            default = default.get_secret_value()
        elif default is None:
            default = ""
        # Defaults computed from this machine are shown by what they stand for.
        default = _SHOWN_DEFAULTS.get(name, default)
        rows.append(f"| `PINWATCH_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(rows) + "\n"
