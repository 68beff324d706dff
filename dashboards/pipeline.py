"""Pipeline health: is every report that apps send getting from ingest through Kafka into
ClickHouse, and how fast? The view behind the "pipeline down or stalled" page."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as dm

from alerts.config import CONFIG as ALERT_CONFIG
from alerts.rules import PINWATCH_RULE_GROUPS
from dashboards.common import (
    APP_HOST,
    alert_links,
    graph,
    prometheus_dashboard,
    promql,
    row,
    single_stat,
)

PIPELINE_JOBS = f"{ALERT_CONFIG.ingest_job}|{ALERT_CONFIG.consumer_job}"

UID = "pinwatch-pipeline"
TITLE = "pinwatch / Pipeline health"
RATE = "[$__rate_interval]"
PROM = f'job="{ALERT_CONFIG.prometheus_job}"'
AM = f'job="{ALERT_CONFIG.alertmanager_job}"'
META_JOBS = f"{ALERT_CONFIG.prometheus_job}|{ALERT_CONFIG.alertmanager_job}"


def _quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{RATE})))"


def _paused_mapping() -> dm.ValueMap:
    return dm.ValueMap(
        options={
            "0": dm.ValueMappingResult(text="consuming", color="green", index=0),
            "1": dm.ValueMappingResult(text="paused (backpressure)", color="orange", index=1),
        }
    )


def build(runbook_url: str) -> dashboard.Dashboard:
    rb = runbook_url
    d = prometheus_dashboard(
        UID,
        TITLE,
        "Ingest, Kafka and consumer health: requests, rejections, produce latency and errors, "
        "consumer lag, insert latency, dead letters, time since the last insert, and whether "
        "alerts get out (meta-monitoring).",
        rb,
    )

    d = (
        d.with_row(row(100, "Now"))
        .with_panel(
            single_stat(
                1,
                "Time since last insert",
                "Seconds since each consumer replica last wrote a batch to ClickHouse. Grows "
                "without bound when that consumer or ClickHouse is down, or no report reaches "
                "its partitions. Each replica writes only its own partitions, so one growing "
                "while the others stay low is stuck.",
                "s",
                [
                    promql(
                        "time() - max by (instance) "
                        "(pinwatch_consumer_last_insert_timestamp_seconds)",
                        "{{instance}}",
                    )
                ],
                thresholds=[(None, "green"), (120, "orange"), (600, "red")],
                links=alert_links(rb, "PinwatchConsumerNotInserting"),
            )
        )
        .with_panel(
            single_stat(
                2,
                "Consumer lag",
                "Records on Kafka not yet consumed, summed over partitions (each counted once, "
                "also while two replicas report it during a rebalance).",
                "short",
                [promql("sum(max by (topic, partition) (pinwatch_consumer_lag))")],
                thresholds=[(None, "green"), (10000, "orange"), (100000, "red")],
                links=alert_links(rb, "PinwatchConsumerLagGrowing"),
            )
        )
        .with_panel(
            single_stat(
                3,
                "Consumer state",
                "Whether each consumer replica is paused: it pauses its partitions while "
                "ClickHouse inserts back up, instead of buffering without bound.",
                "none",
                [promql("max by (instance) (pinwatch_consumer_paused)", "{{instance}}")],
                mappings=[_paused_mapping()],
            )
        )
        .with_panel(
            single_stat(
                4,
                "Accepted reports",
                "Reports per second that ingest acknowledged (only after Kafka had them).",
                "cps",
                [promql(f"sum(rate(pinwatch_ingest_reports_total{RATE}))")],
                links=alert_links(rb, "PinwatchIngestNotReceiving"),
            )
        )
        .with_row(row(101, "Ingest"))
        .with_panel(
            graph(
                14,
                "Scrape targets up",
                "Whether Prometheus can scrape each pinwatch process (1 up, 0 down), per job "
                "and instance (each replica). A job missing here has no target at all: its "
                "pipeline metrics and pinning alerts are blind.",
                "none",
                [
                    promql(
                        f'max by (job, instance) (up{{job=~"{PIPELINE_JOBS}"}})',
                        "{{job}} {{instance}}",
                    )
                ],
                width=12,
                height=5,
                links=alert_links(rb, "PinwatchScrapeTargetDown", "PinwatchScrapeTargetAbsent"),
            )
        )
        .with_panel(
            graph(
                18,
                f"Restarts (last {ALERT_CONFIG.crash_loop_window})",
                "How many times each pinwatch process started anew in the window (a "
                "new process_start_time_seconds), per job and instance. 0 when healthy, 1 "
                "after a deploy; 2 or more is a crash loop, which pages: a process that dies "
                "and comes back within seconds never shows as down above.",
                "none",
                [
                    promql(
                        "max by (job, instance) (changes(process_start_time_seconds"
                        f'{{job=~"{PIPELINE_JOBS}"}}[{ALERT_CONFIG.crash_loop_window}]))',
                        "{{job}} {{instance}}",
                    )
                ],
                width=12,
                height=5,
                links=alert_links(rb, "PinwatchCrashLooping"),
            )
        )
        .with_panel(
            graph(
                5,
                "Ingest requests by status",
                "HTTP requests per second by response status and format. 202 accepted; 4xx "
                "bad input or unknown key; 429/503 backpressure (Kafka slow or down).",
                "reqps",
                [
                    promql(
                        f"sum by (status, format) (rate(pinwatch_ingest_requests_total{RATE}))",
                        "{{status}} {{format}}",
                    )
                ],
                stacked=True,
            )
        )
        .with_panel(
            graph(
                6,
                "Rejected reports by reason",
                "Reports per second refused at ingest, by format and reason (schema, size, "
                "auth, ...). A jump after an app release points at a client bug.",
                "cps",
                [
                    promql(
                        f"sum by (format, reason) (rate(pinwatch_ingest_rejected_total{RATE}))",
                        "{{format}} {{reason}}",
                    )
                ],
            )
        )
        .with_panel(
            graph(
                7,
                "Kafka produce latency",
                "Time from handing a batch to the Kafka producer to its acknowledgement; the "
                "ingest request waits for it before answering 202.",
                "s",
                [
                    promql(_quantile(0.5, "pinwatch_ingest_produce_seconds"), "p50", "A"),
                    promql(_quantile(0.99, "pinwatch_ingest_produce_seconds"), "p99", "B"),
                ],
            )
        )
        .with_panel(
            graph(
                8,
                "Kafka produce errors",
                "Failed produce attempts per second by reason. Each one answered 503 with "
                "Retry-After, so the app retries; nothing was acknowledged. Empty is healthy.",
                "cps",
                [
                    promql(
                        f"sum by (reason) (rate(pinwatch_ingest_produce_errors_total{RATE}))",
                        "{{reason}}",
                    )
                ],
                links=alert_links(rb, "PinwatchIngestProduceFailing"),
            )
        )
        .with_row(row(102, "Consumer"))
        .with_panel(
            graph(
                9,
                "Consumer lag by partition",
                "Records behind the end of each partition. Steady growth means the consumer "
                "cannot keep up or is stuck.",
                "short",
                [
                    promql(
                        # One owner per partition; max, not sum, while two report it.
                        "max by (topic, partition) (pinwatch_consumer_lag)",
                        "{{topic}}/{{partition}}",
                    )
                ],
                links=alert_links(rb, "PinwatchConsumerLagGrowing"),
            )
        )
        .with_panel(
            graph(
                10,
                "Consumed and inserted",
                "Kafka records consumed per second, and reports inserted into ClickHouse per "
                "second by kind. Inserted falling behind consumed means inserts are failing.",
                "cps",
                [
                    promql(
                        f"sum(rate(pinwatch_consumer_consumed_records_total{RATE}))",
                        "consumed records",
                        "A",
                    ),
                    promql(
                        f"sum by (kind) (rate(pinwatch_consumer_inserted_reports_total{RATE}))",
                        "inserted {{kind}}",
                        "B",
                    ),
                ],
            )
        )
        .with_panel(
            graph(
                11,
                "ClickHouse insert latency",
                "Duration of one batch insert into ClickHouse.",
                "s",
                [
                    promql(_quantile(0.5, "pinwatch_consumer_insert_seconds"), "p50", "A"),
                    promql(_quantile(0.99, "pinwatch_consumer_insert_seconds"), "p99", "B"),
                ],
            )
        )
        .with_panel(
            graph(
                12,
                "Insert errors and dead letters",
                "Failed ClickHouse inserts per second (retried; offsets are committed only "
                "after a successful insert), and records sent to the dead-letter topic per "
                "second by reason (records the consumer can never process).",
                "cps",
                [
                    promql(
                        f"sum(rate(pinwatch_consumer_insert_errors_total{RATE}))",
                        "insert errors",
                        "A",
                    ),
                    promql(
                        f"sum by (reason) (rate(pinwatch_consumer_dead_lettered_total{RATE}))",
                        "dead-lettered {{reason}}",
                        "B",
                    ),
                ],
                links=alert_links(rb, "PinwatchConsumerNotInserting"),
            )
        )
        .with_row(row(104, "Alerting (meta-monitoring)"))
        .with_panel(
            graph(
                15,
                "Alert delivery",
                "Prometheus to Alertmanager: alert sends per second, failed sends and dropped "
                "alerts; Alertmanager to receivers: notifications per second and failed ones "
                "by integration (after retries). Sends never stop in a live stack: "
                "PinwatchWatchdog always fires and goes to the heartbeat receiver.",
                "cps",
                [
                    promql(
                        f"sum(rate(prometheus_notifications_sent_total{{{PROM}}}{RATE}))",
                        "Prometheus sent",
                        "A",
                    ),
                    promql(
                        f"sum(rate(prometheus_notifications_errors_total{{{PROM}}}{RATE}))",
                        "Prometheus send errors",
                        "B",
                    ),
                    promql(
                        f"sum(rate(prometheus_notifications_dropped_total{{{PROM}}}{RATE}))",
                        "Prometheus dropped",
                        "C",
                    ),
                    promql(
                        f"sum(rate(alertmanager_notifications_total{{{AM}}}{RATE}))",
                        "Alertmanager notified",
                        "D",
                    ),
                    promql(
                        "sum by (integration) "
                        f"(rate(alertmanager_notifications_failed_total{{{AM}}}{RATE}))",
                        "Alertmanager failed {{integration}}",
                        "E",
                    ),
                ],
                links=alert_links(
                    rb,
                    "PinwatchWatchdog",
                    "PinwatchPrometheusNotificationsFailing",
                    "PinwatchAlertmanagerNotificationsFailing",
                ),
            )
        )
        .with_panel(
            graph(
                16,
                "Rule evaluation failures",
                "Failed evaluations per second of pinwatch's rule groups. Any at all means the "
                "alerts of that group may not fire; Prometheus' /rules page names the error.",
                "cps",
                [
                    promql(
                        "sum by (rule_group) (rate(prometheus_rule_evaluation_failures_total"
                        f"{{{PROM}, {PINWATCH_RULE_GROUPS}}}{RATE}))",
                        "{{rule_group}}",
                    )
                ],
                links=alert_links(rb, "PinwatchRuleEvaluationsFailing"),
            )
        )
        .with_panel(
            graph(
                17,
                "Monitoring targets",
                "Whether Prometheus scrapes itself and Alertmanager (1 up, 0 down; a job "
                "missing here is not scraped at all), and how many Alertmanagers each "
                "Prometheus sends alerts to (0: no alert leaves it).",
                "none",
                [
                    promql(
                        f'max by (job, instance) (up{{job=~"{META_JOBS}"}})',
                        "{{job}} {{instance}} up",
                        "A",
                    ),
                    promql(
                        "max by (instance) "
                        f"(prometheus_notifications_alertmanagers_discovered{{{PROM}}})",
                        "Alertmanagers known to {{instance}}",
                        "B",
                    ),
                ],
                width=24,
                height=6,
                links=alert_links(
                    rb, "PinwatchMonitoringTargetAbsent", "PinwatchAlertmanagerNotConnected"
                ),
            )
        )
        .with_row(row(103, "Traffic by app"))
        .with_panel(
            graph(
                13,
                "Reports processed by app and host",
                "Pin validation and network error reports per second after the consumer "
                "classified them, for the selected apps and hosts.",
                "cps",
                [
                    promql(
                        "sum by (app, host) "
                        f"(rate(pinwatch_pin_validations_total{{{APP_HOST}}}{RATE}))",
                        "pin validations {{app}} {{host}}",
                        "A",
                    ),
                    promql(
                        "sum by (app, host) "
                        f"(rate(pinwatch_network_errors_total{{{APP_HOST}}}{RATE}))",
                        "network errors {{app}} {{host}}",
                        "B",
                    ),
                ],
                width=24,
            )
        )
    )
    return d
