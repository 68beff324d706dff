"""A single-node Apache Kafka (KRaft, combined broker+controller) on loopback.

The jars come from Maven Central once (`devstack/kafka/pom.xml`, package data, is the dependency
list) and are cached under `kafka_home`, outside the repo. Tests, the demo and CI all go through
this module; `deploy/kafka.sh` is its shell face. Each broker instance gets its own data
directory and ports, so several can run side by side.
"""

from __future__ import annotations

import base64
import logging
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from devstack.processes import read_pid, stop_group, tail
from pinwatch.logs import event
from pinwatch.resources import package_path
from pinwatch.settings import Settings

log = logging.getLogger("pinwatch.kafka")

POM = package_path("devstack", "kafka", "pom.xml")
LOG4J = package_path("devstack", "kafka", "log4j2.properties")


class KafkaError(RuntimeError):
    pass


def new_cluster_id(draw: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A KRaft cluster id: the url-safe base64 of 16 random bytes, unpadded. One draw in 64
    starts with '-', which Kafka's command-line tools read as an option (Kafka's own
    Uuid.randomUuid redraws those for the same reason), so this does too."""
    while True:
        cluster_id = base64.urlsafe_b64encode(draw().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def libs_dir(settings: Settings) -> Path:
    return settings.kafka_home / settings.kafka_version / "libs"


def fetch(settings: Settings) -> Path:
    """Download the broker's jars with Maven, once. Returns the classpath directory."""
    libs = libs_dir(settings)
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise KafkaError("Maven (mvn) is needed to fetch Kafka: apt-get install maven")
    event(log, "kafka_fetch_started", version=settings.kafka_version, into=str(libs))
    libs.mkdir(parents=True, exist_ok=True)
    # Maven writes beside the build file (target/): run it on a copy in the cache, never inside
    # the installed package.
    pom = settings.kafka_home / "pom.xml"
    shutil.copyfile(POM, pom)
    cmd = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(pom),
        f"-Dkafka.version={settings.kafka_version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KafkaError(f"fetching Kafka {settings.kafka_version} failed:\n{proc.stdout[-2000:]}")
    if not any(libs.glob(f"kafka_2.13-{settings.kafka_version}.jar")):
        raise KafkaError(f"Maven finished but {libs} has no kafka_2.13 jar")
    marker.touch()
    event(log, "kafka_fetch_done", jars=len(list(libs.glob("*.jar"))))
    return libs


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports. All are held bound while choosing: one at a time,
    the kernel may hand back a port it just gave, and two parts of one stack would collide."""
    with ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class LocalKafka:
    """One broker process. `start()` formats storage on first use and waits until it answers."""

    settings: Settings
    data_dir: Path
    port: int
    controller_port: int
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalKafka:
        host, _, port = settings.kafka_bootstrap.rpartition(":")
        if host not in {"127.0.0.1", "localhost"}:
            raise KafkaError(f"the local broker listens on loopback only, not {host!r}")
        return cls(
            settings=settings,
            data_dir=settings.data_dir / "kafka",
            port=int(port),
            controller_port=settings.kafka_controller_port,
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "broker.pid"

    def _properties(self) -> Path:
        path = self.data_dir / "server.properties"
        path.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={(self.data_dir / 'logs').resolve()}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    # pinwatch creates its topics with explicit settings; a typo must not
                    # silently create a new one.
                    "auto.create.topics.enable=false",
                    "group.initial.rebalance.delay.ms=0",
                    "",
                ]
            )
        )
        return path

    def _java(self, *args: str, heap: str = "256m") -> list[str]:
        libs = fetch(self.settings)
        java = shutil.which("java")
        if java is None:
            raise KafkaError(
                "Java 17+ is needed for the local broker: apt-get install openjdk-17-jre-headless"
            )
        return [
            java,
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def format_storage(self) -> None:
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self._properties()
        # The tool's output goes to the broker log, which a failed start quotes.
        with open(self.log_path, "ab") as out:
            proc = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={new_cluster_id()}",
                    f"--config={props}",
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if proc.returncode != 0:
            raise KafkaError(
                f"formatting Kafka storage failed (exit {proc.returncode}); see {self.log_path}:\n"
                + tail(self.log_path, 10)
            )
        event(log, "kafka_storage_formatted", data_dir=str(self.data_dir))

    def start(self, timeout: float = 90.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the broker (formatting its storage on first use) without waiting for it."""
        if port_open("127.0.0.1", self.port):
            raise KafkaError(f"port {self.port} is already in use; is a broker already running?")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.format_storage()
        props = self._properties()
        event(log, "kafka_starting", bootstrap=self.bootstrap, log=str(self.log_path))
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self._java("kafka.Kafka", str(props), heap=self.settings.kafka_heap),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_path.write_text(str(self.process.pid))

    def exit_status(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def ready(self) -> bool:
        """Ready means a metadata request succeeds, not just an open port."""
        return port_open("127.0.0.1", self.port) and _metadata_ok(self.bootstrap)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last_progress = 0.0
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise KafkaError(
                    f"Kafka exited with {self.process.returncode}; see {self.log_path}:\n"
                    + tail(self.log_path)
                )
            if self.ready():
                event(log, "kafka_ready", bootstrap=self.bootstrap)
                return
            if time.monotonic() - last_progress > 5:
                event(log, "kafka_waiting", bootstrap=self.bootstrap)
                last_progress = time.monotonic()
            time.sleep(0.3)
        self.stop()
        raise KafkaError(f"Kafka not ready after {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        pid = self.process.pid if self.process else read_pid(self.pid_path)
        if pid is None:
            return
        stop_group(pid, self.process, timeout=timeout, poll=0.2)
        self.pid_path.unlink(missing_ok=True)
        self.process = None
        event(log, "kafka_stopped", bootstrap=self.bootstrap)


def _metadata_ok(bootstrap: str) -> bool:
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        finally:
            await admin.close()

    return asyncio.run(probe())


def main(argv: list[str] | None = None) -> int:
    """`python -m devstack.localkafka ACTION` is `pinwatch kafka ACTION`, for scripts that run
    before the console command is installed."""
    from pinwatch.cli import main as cli_main

    return cli_main(["kafka", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
