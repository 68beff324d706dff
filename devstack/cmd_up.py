"""`pinwatch up`: the whole pipeline on this machine, left running until Ctrl-C.

A part that cannot start the first time stops everything (there is nothing to supervise yet);
once up, a part that exits is started again with backoff (devstack.supervise) while the rest,
Prometheus and Alertmanager included, keep running, so the pipeline alerts can page about it.
"""

from __future__ import annotations

import argparse
import sys
import time

from devstack.stack import (
    Stack,
    StackError,
    StackOptions,
    add_stack_arguments,
    quiet_progress_loggers,
    terminate_on_sigterm,
)
from devstack.supervise import Backoff
from pinwatch.settings import Settings

HELP = (
    "run the whole local stack (Kafka, ingest, consumer, prober, Prometheus, Alertmanager) "
    "until Ctrl-C, restarting any part that exits"
)

TICK_SECONDS = 0.5  # how often the supervisor looks at the parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stack_arguments(parser, scrape_interval=5.0, policy_refresh=10)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        backoff = Backoff(
            settings.stack_restart_initial_seconds,
            settings.stack_restart_max_seconds,
            settings.stack_restart_reset_after_seconds,
        )
    except ValueError as exc:
        print(f"pinwatch up: PINWATCH_STACK_RESTART_*: {exc}", file=sys.stderr)
        return 2
    quiet_progress_loggers()
    stack = Stack(
        settings,
        StackOptions(
            data_dir=settings.data_dir,
            kafka_bootstrap=args.kafka_bootstrap,
            scrape_interval=args.scrape_interval,
            evaluation_interval=args.scrape_interval,
            policy_refresh_seconds=args.policy_refresh,
        ),
        say=lambda line: print(line, flush=True),
    )
    print(f"pinwatch up: starting the local stack (data in {stack.config.data_dir})", flush=True)
    with terminate_on_sigterm():
        try:
            stack.start()
            print(ready_text(stack), flush=True)
            supervisor = stack.supervisor(backoff)
            while True:
                supervisor.tick()
                time.sleep(TICK_SECONDS)
        except StackError as exc:
            print(f"pinwatch up: {exc}", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            print("\npinwatch up: stopping", flush=True)
        finally:
            stack.stop()
    return 0


def ready_text(stack: Stack) -> str:
    urls = "\n".join(f"  {name:<17} {url}" for name, url in stack.urls().items())
    cfg = stack.config
    if stack.kafka is not None:
        kafka = f"{cfg.kafka_bootstrap} (started here; log {stack.kafka.log_path})"
    else:
        kafka = f"{cfg.kafka_bootstrap} (already running; not stopped with the stack)"
    return f"""
pinwatch is up.
{urls}
  Kafka             {kafka}
  logs              {stack.logs_dir}/ (ingest.log, consumer.log, probe.log)

Send traffic from a second terminal (same settings, e.g. the same PINWATCH_* variables):
  pinwatch simulate steady --duration 120
  pinwatch simulate unplanned_rotation --duration 300 --change-after 60

Pull the live policy's levers (the edge serves each change within seconds):
  pinwatch policy status
  pinwatch policy set-phase cdn.acme.test enforce --percent 10 --reason "staged rollout"
  pinwatch policy kill com.acme.app --host api.acme.test --reason "rotation broke pinning"
  pinwatch policy history

Grafana: add a Prometheus data source at {stack.prometheus_url}, then import the dashboards
in dashboards/json/ (deploy/grafana/ provisions both for the Docker Compose stack; point its
Prometheus data source URL at {stack.prometheus_url}).

A part that exits is restarted (its log tail printed here); Prometheus and Alertmanager keep
running meanwhile and page about a part that stays down. Pages print here as Alertmanager
delivers them. Ctrl-C stops everything.
"""
