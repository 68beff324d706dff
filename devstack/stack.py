"""The whole pipeline on this machine, as child processes of one supervisor: what `pinwatch up`
leaves running and what `pinwatch demo` plays an incident against.

Started in order, each waited for until it is really ready (not merely running): the local
Kafka broker (devstack.localkafka), `pinwatch migrate`, `pinwatch ingest`, `pinwatch consume`,
a small webhook listener in this process that prints the pages it receives, Alertmanager
(routing to that listener) and Prometheus (scraping ingest and consumer, evaluating the shipped
rules; both through devstack.monitoring). A component that fails to start raises `StackError`
naming it, why, and its log. Once started, `pinwatch up` hands the parts to a
`devstack.supervise.Supervisor` (`Stack.supervisor`), which restarts any that exits;
`pinwatch demo` instead ends at the first one that dies (`Stack.check`). `stop()` takes
everything down in reverse order, each child as a whole process group, so no process outlives
the stack.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import certifi
import httpx

from alerts.config import CONFIG as ALERT_CONFIG
from devstack.certs import demo_pki_dir
from devstack.localkafka import KafkaError, LocalKafka, free_port, free_ports, port_open
from devstack.monitoring import (
    CONSUMER_JOB,
    INGEST_JOB,
    LocalAlertmanager,
    LocalPrometheus,
    MonitoringError,
)
from devstack.processes import cmdline, read_pid, signal_group, tail
from devstack.supervise import Backoff, Component, Supervisor, describe_status
from pinwatch.jose import create_key_file
from pinwatch.logs import event
from pinwatch.settings import Settings

log = logging.getLogger("devstack.stack")

Say = Callable[[str], None]


class StackError(RuntimeError):
    """A part of the stack failed to start (`up` and the demo stop), or, for the demo, one that
    was running exited (`what="exited"`)."""

    def __init__(
        self,
        component: str,
        why: str,
        log_path: Path | None = None,
        *,
        what: str = "failed to start",
    ) -> None:
        where = f"\n  log: {log_path}" if log_path else ""
        last_lines = tail(log_path, 15).splitlines() if log_path else []
        quoted = "".join(f"\n  | {line}" for line in last_lines)
        super().__init__(f"{component} {what}: {why}{where}{quoted}")
        self.component = component
        self.log_path = log_path


@dataclass(frozen=True)
class StackOptions:
    """How the stack runs. `up` keeps the settings' ports; the demo asks for free ones and its
    own data directory, so it never collides with a running development stack."""

    data_dir: Path
    fresh: bool = False  # wipe data_dir first (the demo: counts start at zero)
    free_ports: bool = False
    kafka_bootstrap: str | None = None  # use this broker instead of starting one
    scrape_interval: float = 5.0
    evaluation_interval: float = 5.0
    local_pages_only: bool = False  # the demo: no PagerDuty/Opsgenie even if configured
    ready_timeout: float = 90.0
    policy_refresh_seconds: int | None = None  # clients' policy refresh (the document says it)


@dataclass
class Page:
    received_at: float  # time.time()
    path: str  # /page (severity page) or /notify (tickets, info)
    payload: dict[str, Any]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return list(self.payload.get("alerts", []))

    @property
    def alertname(self) -> str:
        labels = self.payload.get("commonLabels") or {}
        return str(labels.get("alertname") or "")

    def describe(self) -> str:
        lines = []
        kind = "PAGE" if self.path == "/page" else "notification"
        for alert in self.alerts:
            labels, notes = alert.get("labels", {}), alert.get("annotations", {})
            where = " ".join(f"{k}={labels[k]}" for k in ("app", "host", "cause") if labels.get(k))
            lines.append(
                f"{kind} [{alert.get('status', '?')}] {labels.get('alertname', '?')} "
                f"({labels.get('severity', '?')}) {where}: {notes.get('summary', '')}"
                + (f"\n    runbook: {notes['runbook_url']}" if notes.get("runbook_url") else "")
                + (f"\n    kill switch: {notes['kill_switch']}" if notes.get("kill_switch") else "")
            )
        return "\n".join(lines)


class PageReceiver:
    """The on-call end of Alertmanager: a loopback webhook that prints and keeps what it gets.
    Alertmanager posts pages (the on-call receiver) to /page, tickets and info to /notify."""

    def __init__(self, port: int, say: Say) -> None:
        self.port = port
        self.say = say
        self.received: list[Page] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = min(int(self.headers.get("Content-Length") or 0), 1_048_576)
                try:
                    payload = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                page = Page(time.time(), self.path, payload)
                with receiver._lock:
                    receiver.received.append(page)
                receiver.say(page.describe())
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the stack prints pages itself; no access log

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def pages(self, status: str = "firing") -> list[Page]:
        with self._lock:
            return [
                p
                for p in self.received
                if p.path == "/page" and any(a.get("status") == status for a in p.alerts)
            ]


def alertmanager_config(settings: Settings, receiver_url: str, *, local_only: bool) -> str:
    """The shipped routing and inhibitions (alerts.generate), with the local receiver as the
    on-call webhook (/page) and the ticket and info webhook (/notify). `pinwatch up` also keeps
    PagerDuty, Opsgenie and webhooks the settings name; the demo pages only locally."""
    from alerts.generate import alertmanager_config as shipped

    config = shipped(
        pagerduty_routing_key_file="" if local_only else settings.alert_pagerduty_routing_key_file,
        opsgenie_api_key_file="" if local_only else settings.alert_opsgenie_api_key_file,
        oncall_webhook_url=f"{receiver_url}/page",
        webhook_url=(not local_only and settings.alert_webhook_url.get_secret_value())
        or f"{receiver_url}/notify",
        # The Watchdog's heartbeat goes only to a real heartbeat service: printed locally, it
        # would be a line a minute of noise.
        heartbeat_url="" if local_only else settings.alert_heartbeat_url.get_secret_value(),
    )
    return json.dumps(config, indent=2)  # JSON is YAML


class ChildCommand:
    """A `pinwatch` subcommand as a child process in its own process group, logging to a file."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log_path: Path, ready_url: str = ""
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.ready_url = ready_url
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pinwatch.cli", *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.log_path.parent,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def exit_status(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def ready(self) -> bool:
        try:
            return httpx.get(self.ready_url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float, progress: Callable[[float], None]) -> None:
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        last = started
        while time.monotonic() < deadline:
            code = self.exit_status()
            if code is not None:
                raise StackError(self.name, describe_status(code), self.log_path)
            if self.ready():
                return
            if time.monotonic() - last >= 5:
                last = time.monotonic()
                progress(last - started)
            time.sleep(0.2)
        raise StackError(
            self.name, f"not ready after {timeout:.0f}s ({self.ready_url})", self.log_path
        )

    def run_to_end(self, timeout: float) -> None:
        """For one-shot commands (migrate)."""
        self.launch()
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise StackError(
                self.name, f"did not finish in {timeout:.0f}s", self.log_path
            ) from None
        if code != 0:
            raise StackError(self.name, describe_status(code), self.log_path)

    def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@dataclass
class Stack:
    settings: Settings  # the caller's; the stack derives its own (`self.config`)
    options: StackOptions
    say: Say = print
    config: Settings = field(init=False)
    kafka: LocalKafka | None = field(init=False, default=None)
    ingest: ChildCommand | None = field(init=False, default=None)
    consumer: ChildCommand | None = field(init=False, default=None)
    probe: ChildCommand | None = field(init=False, default=None)
    receiver: PageReceiver | None = field(init=False, default=None)
    receiver_port: int = field(init=False, default=0)
    alertmanager: LocalAlertmanager | None = field(init=False, default=None)
    prometheus: LocalPrometheus | None = field(init=False, default=None)
    env: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        opts = self.options
        data_dir = opts.data_dir.resolve()
        overrides: dict[str, Any] = {
            "data_dir": data_dir,
            "policy_file": self.settings.policy_file.resolve(),
            "public_roots_file": self._public_roots(data_dir),
            "log_format": "json",
        }
        if opts.free_ports:
            ports = free_ports(8)
            kafka, controller, ingest, consumer, prometheus, alertmanager, receiver, probe = ports
            overrides.update(
                probe_port=probe,
                kafka_bootstrap=f"127.0.0.1:{kafka}",
                kafka_controller_port=controller,
                ingest_port=ingest,
                consumer_port=consumer,
                prometheus_port=prometheus,
                alertmanager_port=alertmanager,
            )
            self.receiver_port = receiver
        else:
            self.receiver_port = free_port()
        if opts.kafka_bootstrap:
            overrides["kafka_bootstrap"] = opts.kafka_bootstrap
        if opts.policy_refresh_seconds is not None:
            overrides["policy_refresh_seconds"] = opts.policy_refresh_seconds
        self.config = self.settings.model_copy(update=overrides)
        # The children run on exactly the stack's settings, including those the caller set in
        # code rather than in the environment (secrets too: this is their environment, never
        # printed).
        self.env = {**os.environ, **self.config.env_vars(list(Settings.model_fields))}

    def _public_roots(self, data_dir: Path) -> Path:
        """Unless the user named a bundle, trust certifi's roots plus the simulator's public
        root, so simulated rotations look public and real chains still do too."""
        configured = self.settings.public_roots_file
        if configured.resolve() != Path(certifi.where()).resolve():
            return configured.resolve()
        return data_dir / "public-roots.pem"

    # --- addresses --------------------------------------------------------------------------
    @property
    def ingest_url(self) -> str:
        return f"http://{self.config.ingest_host}:{self.config.ingest_port}"

    @property
    def consumer_url(self) -> str:
        return f"http://{self.config.consumer_host}:{self.config.consumer_port}"

    @property
    def probe_url(self) -> str:
        return f"http://{self.config.probe_host}:{self.config.probe_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.config.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.config.alertmanager_port}"

    @property
    def logs_dir(self) -> Path:
        return self.config.data_dir / "logs"

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cfg, opts = self.config, self.options
        self._reap_leftovers()
        if opts.fresh and cfg.data_dir.exists():
            _wipe(cfg.data_dir)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._write_public_roots()
        self._policy_signing_key()
        self._step_kafka()
        self._step(
            "schema",
            f"ClickHouse schema ({cfg.clickhouse_shown})",
            lambda: self._child("migrate", ["migrate"]).run_to_end(opts.ready_timeout),
        )
        self.ingest = self._child("ingest", ["ingest"], f"{self.ingest_url}/readyz")
        self._step_child(self.ingest, f"ingest on {self.ingest_url}")
        self.consumer = self._child("consumer", ["consume"], f"{self.consumer_url}/metrics")
        self._step_child(self.consumer, f"consumer on {self.consumer_url} (chDB, Kafka group)")
        self.probe = self._child("probe", ["probe"], f"{self.probe_url}/metrics")
        self._step_child(self.probe, f"prober on {self.probe_url} (every edge of every host)")
        self.receiver = PageReceiver(self.receiver_port, self.say)
        self.receiver.start()
        self.say(f"  ok   page receiver on {self.receiver.url}")
        self.alertmanager = LocalAlertmanager(
            cfg.data_dir / "alertmanager",
            port=cfg.alertmanager_port,
            config=alertmanager_config(
                self.settings, self.receiver.url, local_only=opts.local_pages_only
            ),
        )
        self._step_monitor(self.alertmanager, f"Alertmanager on {self.alertmanager_url}")
        self.prometheus = LocalPrometheus(
            cfg.data_dir / "prometheus",
            port=cfg.prometheus_port,
            jobs={
                INGEST_JOB: [f"{cfg.ingest_host}:{cfg.ingest_port}"],
                CONSUMER_JOB: [f"{cfg.consumer_host}:{cfg.consumer_port}"],
                ALERT_CONFIG.probe_job: [f"{cfg.probe_host}:{cfg.probe_port}"],
                # Meta-monitoring: Prometheus itself and Alertmanager (alerts/config.py).
                ALERT_CONFIG.prometheus_job: [self.prometheus_url.removeprefix("http://")],
                ALERT_CONFIG.alertmanager_job: [self.alertmanager_url.removeprefix("http://")],
            },
            scrape_interval=opts.scrape_interval,
            evaluation_interval=opts.evaluation_interval,
            alertmanager_url=self.alertmanager_url,
        )
        self._step_monitor(self.prometheus, f"Prometheus on {self.prometheus_url}")

    def _reap_leftovers(self) -> None:
        """Stop what a previous stack in this data directory left running when it was killed
        without a chance to clean up (SIGKILL, a closed terminal). Ingest and consumer die with
        their supervisor by themselves; the engines are found through their pid files, and
        only a process still running with this directory's configuration is signalled."""
        data_dir = self.config.data_dir
        leftovers = [
            LocalPrometheus(data_dir / "prometheus", jobs={}),
            LocalAlertmanager(data_dir / "alertmanager", config=""),
        ]
        for engine in leftovers:
            if engine.running:
                self.say(f"  stopping {engine.name}, left running by an earlier stack")
                engine.stop()
        broker = LocalKafka.from_settings(self.config)
        pid = read_pid(broker.pid_path)
        if pid is not None and str(broker.data_dir.resolve()) in cmdline(pid):
            self.say("  stopping Kafka, left running by an earlier stack")
            broker.stop()

    def _policy_signing_key(self) -> None:
        """The key the edge signs policy documents with: made in the data directory on first
        start, unless the settings name one (PINWATCH_POLICY_SIGNING_KEY[_FILE])."""
        cfg = self.config
        if cfg.policy_signing_key.get_secret_value() or self.settings.policy_signing_key_file:
            return
        if create_key_file(cfg.policy_signing_key_path):
            self.say(f"  ok   policy signing key created: {cfg.policy_signing_key_path}")

    def _write_public_roots(self) -> None:
        path = self.config.public_roots_file
        if path.parent != self.config.data_dir.resolve():
            return
        simulated = (demo_pki_dir(self.settings) / "public-roots.pem").resolve()
        bundle = Path(certifi.where()).read_bytes()
        if simulated.exists():
            bundle += b"\n" + simulated.read_bytes()
        path.write_bytes(bundle)

    def _step(self, name: str, what: str, action: Callable[[], None]) -> None:
        self.say(f"  ...  {what}")
        started = time.monotonic()
        action()
        event(log, "stack_component_ready", component=name, seconds=time.monotonic() - started)
        self.say(f"  ok   {name} ready in {time.monotonic() - started:.1f}s")

    def _step_kafka(self) -> None:
        cfg = self.config
        host, _, port = cfg.kafka_bootstrap.rpartition(":")
        if self.options.kafka_bootstrap or (
            not self.options.free_ports and port_open(host, int(port))
        ):
            self.say(f"  ok   Kafka: using the broker already at {cfg.kafka_bootstrap}")
            return
        broker = LocalKafka.from_settings(cfg)
        self.kafka = broker

        def start() -> None:
            try:
                broker.start(timeout=self.options.ready_timeout)
            except KafkaError as exc:
                raise StackError("Kafka", str(exc).split("\n", 1)[0], broker.log_path) from exc

        self._step("Kafka", f"Kafka broker on {broker.bootstrap} (log {broker.log_path})", start)

    def _step_child(self, child: ChildCommand, what: str) -> None:
        def start() -> None:
            child.launch()
            child.wait_ready(
                self.options.ready_timeout,
                lambda waited: self.say(
                    f"       still waiting for {child.name} ({waited:.0f}s; {child.ready_url})"
                ),
            )

        self._step(child.name, f"{what} (log {child.log_path})", start)

    def _step_monitor(self, component: LocalAlertmanager | LocalPrometheus, what: str) -> None:
        def start() -> None:
            try:
                component.start(timeout=self.options.ready_timeout)
            except MonitoringError as exc:
                why = str(exc).split("\n", 1)[0]
                raise StackError(component.name, why, component.log_path) from exc

        self._step(component.name, f"{what} (log {component.log_path})", start)

    def _child(self, name: str, argv: list[str], ready_url: str = "") -> ChildCommand:
        return ChildCommand(name, argv, self.env, self.logs_dir / f"{name}.log", ready_url)

    def parts(self) -> list[tuple[str, Component]]:
        """Every long-running part this stack started, in start order (a broker it did not
        start is not among them)."""
        parts: list[tuple[str, Component | None]] = [
            ("Kafka", self.kafka),
            ("ingest", self.ingest),
            ("consumer", self.consumer),
            ("probe", self.probe),
            ("alertmanager", self.alertmanager),
            ("prometheus", self.prometheus),
        ]
        return [(name, part) for name, part in parts if part is not None]

    def check(self) -> None:
        """Raise StackError when a part that should be running has exited (the demo)."""
        for name, part in self.parts():
            status = part.exit_status()
            if status is not None:
                raise StackError(name, describe_status(status), part.log_path, what="exited")

    def supervisor(self, backoff: Backoff) -> Supervisor:
        """`pinwatch up`'s watch over the started stack: each part started again when it
        exits (devstack.supervise)."""
        return Supervisor(
            self.parts(), backoff, ready_timeout=self.options.ready_timeout, say=self.say
        )

    def stop(self) -> None:
        """Everything down, in reverse order; safe to call twice or after a failed start."""
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.prometheus is not None:
            steps.append(("Prometheus", self.prometheus.stop))
        if self.alertmanager is not None:
            steps.append(("Alertmanager", self.alertmanager.stop))
        if self.receiver is not None:
            steps.append(("page receiver", self.receiver.stop))
        # Ingest first: it flushes what it accepted to Kafka before the consumer goes.
        if self.ingest is not None:
            steps.append(("ingest", self.ingest.stop))
        if self.consumer is not None:
            steps.append(("consumer", self.consumer.stop))
        if self.probe is not None:
            steps.append(("prober", self.probe.stop))
        if self.kafka is not None:
            steps.append(("Kafka", self.kafka.stop))
        self.prometheus = self.alertmanager = self.receiver = None
        self.ingest = self.consumer = self.probe = None
        self.kafka = None
        for name, stop in steps:
            try:
                stop()
                self.say(f"  stopped {name}")
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                self.say(f"  could not stop {name} cleanly: {exc}")

    def urls(self) -> dict[str, str]:
        urls = {
            "ingest": f"{self.ingest_url}/v1/reports",
            "policy documents": f"{self.ingest_url}/v1/policy/{{app}} (keys: /v1/policy/keys)",
            "ingest metrics": f"{self.ingest_url}/metrics",
            "consumer metrics": f"{self.consumer_url}/metrics",
            "prober metrics": f"{self.probe_url}/metrics",
            "Prometheus": self.prometheus_url,
            "Alertmanager": self.alertmanager_url,
        }
        if self.receiver is not None:
            urls["page receiver"] = self.receiver.url
        return urls


def add_stack_arguments(
    parser: argparse.ArgumentParser, *, scrape_interval: float, policy_refresh: int
) -> None:
    """Options `up` and `demo` share."""
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=scrape_interval,
        help="Prometheus scrape and rule evaluation interval, seconds "
        f"(default {scrape_interval:g})",
    )
    parser.add_argument(
        "--kafka-bootstrap",
        default=None,
        help="use this running broker (with the settings' topic names) instead of starting one",
    )
    parser.add_argument(
        "--policy-refresh",
        type=int,
        default=policy_refresh,
        help="seconds between two fetches of the signed policy document by each (simulated) "
        f"client: the document's refresh_seconds (default {policy_refresh}; a kill switch "
        "reaches every client within about this)",
    )


@contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt, so `finally:` blocks stop the children.
    SIGINT is set explicitly: a process started in the background by a shell inherits it
    ignored, and would otherwise never stop on an interrupt."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def quiet_progress_loggers() -> None:
    """The stack prints its own progress for people; its components' structured start/stop
    events would repeat it on the terminal (each child's own log goes to its file)."""
    for name in ("devstack.stack", "devstack.monitoring", "pinwatch.kafka", "pinwatch.topics"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the stack process dies, even by SIGKILL, so a
    killed supervisor leaves no ingest or consumer behind (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() still ends the children on every orderly exit


def _wipe(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
