"""Prometheus and Alertmanager as child processes on loopback, plus small clients for their APIs.

Tests, the demo and `pinwatch up` all run the real engines through this module: it writes the
configuration into a data directory, starts the binary in its own process group, waits until
`/-/ready` answers, and stops the whole group (SIGTERM, then SIGKILL) even when starting failed,
so no stray process outlives its owner. Every error names the log file to read.

    with LocalAlertmanager(tmp / "am", config=text) as am, LocalPrometheus(
        tmp / "prom",
        jobs={CONSUMER_JOB: ["127.0.0.1:9787"]},
        alertmanager_url=am.url,
    ) as prom:
        prom.query("up")

Blocking calls (start, stop, queries) use plain sockets and httpx; from an event loop that also
serves what Prometheus scrapes, call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

from alerts.config import CONFIG as ALERTS
from alerts.generate import ALERTMANAGER_FILE, RULES_FILE
from devstack.localkafka import free_port
from devstack.processes import alive, cmdline, read_pid, stop_group, tail
from pinwatch.logs import event

log = logging.getLogger("devstack.monitoring")

# The shipped rules: what every Prometheus that pinwatch starts evaluates.
RULE_FILES: tuple[Path, ...] = (RULES_FILE,)
ALERTMANAGER_CONFIG = ALERTMANAGER_FILE

# Scrape job names the shipped rules select on: the monitoring mixin owns them.
INGEST_JOB = ALERTS.ingest_job
CONSUMER_JOB = ALERTS.consumer_job

_HOST = "127.0.0.1"


class MonitoringError(RuntimeError):
    pass


def duration(seconds: float) -> str:
    """Prometheus duration text for a number of seconds: 15 -> "15s", 0.5 -> "500ms"."""
    if seconds <= 0:
        raise MonitoringError(f"a duration must be positive, not {seconds}")
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def prometheus_config(
    *,
    jobs: Mapping[str, Sequence[str]],
    scrape_interval: float = 15.0,
    evaluation_interval: float = 15.0,
    rule_files: Sequence[Path] = RULE_FILES,
    alertmanager_url: str | None = None,
) -> dict[str, Any]:
    """Prometheus configuration: one static scrape job per entry of `jobs` (name -> host:port
    targets), the given rule files, and the Alertmanager to notify (none: alerts stay in
    Prometheus)."""
    for name, targets in jobs.items():
        for target in targets:
            host, sep, port = target.rpartition(":")
            if not sep or not host or not port.isdigit() or "/" in target:
                raise MonitoringError(
                    f"scrape target of job {name!r} must be host:port: {target!r}"
                )
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": duration(scrape_interval),
            # A scrape must end before the next one starts.
            "scrape_timeout": duration(min(10.0, scrape_interval)),
            "evaluation_interval": duration(evaluation_interval),
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {"job_name": name, "static_configs": [{"targets": list(targets)}]}
            for name, targets in jobs.items()
        ],
    }
    if alertmanager_url:
        scheme, _, address = alertmanager_url.rstrip("/").partition("://")
        if not address or "/" in address:
            raise MonitoringError(
                f"Alertmanager URL must be scheme://host:port: {alertmanager_url!r}"
            )
        config["alerting"] = {
            "alertmanagers": [{"scheme": scheme, "static_configs": [{"targets": [address]}]}]
        }
    return config


def pipeline_jobs(*, ingest_url: str = "", consumer_url: str = "") -> dict[str, list[str]]:
    """Scrape jobs for a running pipeline under the job names the shipped rules expect, from
    the base URLs of ingest and the consumer ("http://127.0.0.1:8787"); empty URLs are left
    out."""
    jobs = {}
    for job, url in ((INGEST_JOB, ingest_url), (CONSUMER_JOB, consumer_url)):
        if url:
            scheme, sep, address = url.rstrip("/").partition("://")
            if scheme != "http" or not sep or "/" in address:
                raise MonitoringError(f"{job} URL must be http://host:port, not {url!r}")
            jobs[job] = [address]
    return jobs


class _ChildProcess:
    """One engine process in its own process group, with its log and pid file in `data_dir`."""

    name = "process"
    binary = ""

    def __init__(self, data_dir: Path, port: int | None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{_HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / f"{self.name}.pid"

    @property
    def config_path(self) -> Path:
        raise NotImplementedError

    def _write_config(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        """Write the configuration, start the process and wait until it reports ready."""
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def launch(self) -> None:
        """Write the configuration and start the process, without waiting for it."""
        if self.process is not None and self.process.poll() is None:
            raise MonitoringError(f"{self.name} is already running on {self.url}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        command = self._command()
        event(log, f"{self.name}_starting", url=self.url, log=str(self.log_path))
        with open(self.log_path, "ab") as out:
            try:
                self.process = subprocess.Popen(
                    command,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.data_dir,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise MonitoringError(
                    f"{command[0]} not found; install it with deploy/install.sh"
                ) from exc
        self.pid_path.write_text(str(self.process.pid))

    def exit_status(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise MonitoringError(
                    f"{self.name} exited with {self.process.returncode}; see {self.log_path}:\n"
                    + tail(self.log_path)
                )
            if self.ready():
                event(log, f"{self.name}_ready", url=self.url)
                return
            time.sleep(0.1)
        raise MonitoringError(
            f"{self.name} not ready after {timeout:.0f}s on {self.url}; see {self.log_path}:\n"
            + tail(self.log_path)
        )

    @property
    def running(self) -> bool:
        pid = self._pid()
        return pid is not None and alive(pid, self.process)

    def _pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid
        pid = read_pid(self.pid_path)
        # A pid file can outlive its process and the number be reused: only signal a process
        # that runs our binary with our configuration file.
        command = cmdline(pid) if pid is not None else ""
        if self.binary not in command or str(self.config_path.resolve()) not in command:
            return None
        return pid

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the process group: SIGTERM, then SIGKILL after `timeout`. Works from another
        process too, through the pid file."""
        pid = self._pid()
        if pid is not None:
            stop_group(pid, self.process, timeout=timeout, poll=0.05)
            event(log, f"{self.name}_stopped", url=self.url)
        self.pid_path.unlink(missing_ok=True)
        self.process = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalPrometheus(_ChildProcess):
    """A Prometheus scraping `jobs` (job name -> ["host:port", ...]) and evaluating
    `rule_files` (default: the shipped alerts/rules.yml), notifying `alertmanager_url`."""

    name = "prometheus"
    binary = "prometheus"

    def __init__(
        self,
        data_dir: Path,
        *,
        jobs: Mapping[str, Sequence[str]],
        port: int | None = None,
        scrape_interval: float = 15.0,
        evaluation_interval: float = 15.0,
        rule_files: Sequence[Path] = RULE_FILES,
        alertmanager_url: str | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self.config = prometheus_config(
            jobs=jobs,
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval,
            rule_files=rule_files,
            alertmanager_url=alertmanager_url,
        )

    @property
    def config_path(self) -> Path:
        return self.data_dir / "prometheus.yml"

    def _write_config(self) -> None:
        for rule_file in self.config["rule_files"]:
            if not Path(rule_file).is_file():
                raise MonitoringError(f"rule file {rule_file} does not exist")
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path.resolve()}",
            f"--storage.tsdb.path={(self.data_dir / 'tsdb').resolve()}",
            f"--web.listen-address={_HOST}:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=info",
        ]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Ready also means the Alertmanager is known: Prometheus discovers it up to 5 s after
        start, and alerts that fire before that wait for the 1 min resend delay."""
        started = time.monotonic()
        super().wait_ready(timeout)
        if "alerting" not in self.config:
            return
        deadline = started + timeout
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.url}/api/v1/alertmanagers", timeout=5.0)
            if _check(response, self)["data"]["activeAlertmanagers"]:
                return
            time.sleep(0.2)
        raise MonitoringError(
            f"prometheus did not pick up its Alertmanager within {timeout:.0f}s; "
            f"see {self.log_path}"
        )

    def reload(self) -> None:
        """Re-read configuration and rule files (after `config` or a rule file changed)."""
        self._write_config()
        _check(httpx.post(f"{self.url}/-/reload", timeout=10.0), self)

    def query(self, expr: str) -> list[dict[str, Any]]:
        return query(self.url, expr)

    def alerts(self) -> list[dict[str, Any]]:
        return prometheus_alerts(self.url)

    def targets(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/targets", timeout=10.0)
        return list(_check(response, self)["data"]["activeTargets"])


class LocalAlertmanager(_ChildProcess):
    """A single-node Alertmanager (no cluster listener) with the given configuration: YAML
    text, or a file to copy (default: the shipped alerts/alertmanager.yml)."""

    name = "alertmanager"
    binary = "prometheus-alertmanager"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        config: str | None = None,
        config_file: Path = ALERTMANAGER_CONFIG,
    ) -> None:
        super().__init__(data_dir, port)
        self.config_text = config if config is not None else Path(config_file).read_text()

    @property
    def config_path(self) -> Path:
        return self.data_dir / "alertmanager.yml"

    def _write_config(self) -> None:
        # Owner-only before anything is written: webhook URLs (the heartbeat's) carry tokens.
        self.config_path.touch(mode=0o600)
        self.config_path.chmod(0o600)
        self.config_path.write_text(self.config_text)

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path.resolve()}",
            f"--storage.path={(self.data_dir / 'data').resolve()}",
            f"--web.listen-address={_HOST}:{self.port}",
            # Empty: no gossip listener, a single node that needs no peers.
            "--cluster.listen-address=",
        ]

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        return alertmanager_alerts(self.url, **filters)


def query(prometheus_url: str, expr: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Instant query: the result vector, each item {"metric": {...}, "value": [ts, "text"]}."""
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=timeout)
    data = _check(response)["data"]
    if data["resultType"] != "vector":
        raise MonitoringError(f"{expr!r} returned a {data['resultType']}, not a vector")
    return list(data["result"])


def query_value(prometheus_url: str, expr: str) -> float | None:
    """The single value of an instant query, None when it returns nothing."""
    result = query(prometheus_url, expr)
    if len(result) > 1:
        raise MonitoringError(f"{expr!r} returned {len(result)} series, expected one")
    return float(result[0]["value"][1]) if result else None


def prometheus_alerts(prometheus_url: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Pending and firing alerts: {"labels", "annotations", "state", "activeAt", "value"}."""
    response = httpx.get(f"{prometheus_url}/api/v1/alerts", timeout=timeout)
    return list(_check(response)["data"]["alerts"])


def alertmanager_alerts(
    alertmanager_url: str, timeout: float = 10.0, **filters: str
) -> list[dict[str, Any]]:
    """Alerts Alertmanager holds (API v2). `filters` are label equalities, e.g. severity="page";
    inhibited and silenced alerts are included, with `status.state` saying so."""
    params = [("filter", f'{name}="{value}"') for name, value in filters.items()]
    response = httpx.get(f"{alertmanager_url}/api/v2/alerts", params=params, timeout=timeout)
    result = _check(response)
    if not isinstance(result, list):
        raise MonitoringError(f"unexpected Alertmanager answer: {str(result)[:200]}")
    return result


def _check(response: httpx.Response, owner: _ChildProcess | None = None) -> Any:
    where = f"; see {owner.log_path}" if owner is not None else ""
    if response.status_code >= 400:
        raise MonitoringError(
            f"{response.request.method} {response.request.url} answered "
            f"{response.status_code}: {response.text[:500]}{where}"
        )
    if not response.content:
        return None
    body = response.json()
    if isinstance(body, dict) and body.get("status") == "error":
        raise MonitoringError(f"{response.request.url}: {body.get('error')}{where}")
    return body
