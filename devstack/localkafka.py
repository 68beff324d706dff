"""Apache Kafka (KRaft) on loopback: one node, or a cluster of three, for tests, the demo and
the fault drills.

Every node is a combined broker and controller (`process.roles=broker,controller`): a cluster of
three is three such processes that form the controller quorum among themselves
(`controller.quorum.voters` names all three), so any one of them can die and the other two still
elect a controller and lead every partition. The jars come from Maven Central once
(`devstack/kafka/pom.xml`, package data, is the dependency list) and are cached under
`kafka_home`, outside the repo. Tests, the demo and CI all go through this module;
`deploy/kafka.sh` is its shell face. Each node gets its own data directory and ports, so several
can run side by side.

Besides its PLAINTEXT listener (which the nodes also use among themselves), a node given a
`BrokerTls` opens an SSL listener that requires a client certificate (mutual TLS) and a
SASL_SSL listener that authenticates SCRAM-SHA-256 and SCRAM-SHA-512 users. Kafka 4 reads PEM
directly (`ssl.keystore.type=PEM`), so no keystore file is made; the SCRAM users are written
into the metadata log when storage is formatted (`--add-scram`).
"""

from __future__ import annotations

import base64
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from threading import Thread

from devstack.processes import read_pid, signal_group, stop_group, tail
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


@contextmanager
def scratch_broker(
    data_dir: Path, *, bootstrap: str | None = None, say: Callable[[str], None] | None = None
) -> Iterator[str]:
    """A broker for a test session or a benchmark: `bootstrap` when one is given (a running
    broker is reused as it is), else a fresh one on free loopback ports with its state in
    `data_dir`, stopped at the end. Yields the bootstrap address."""
    if bootstrap:
        yield bootstrap
        return
    port, controller = free_ports(2)
    broker = LocalKafka.from_settings(
        Settings(
            kafka_bootstrap=f"127.0.0.1:{port}",
            kafka_controller_port=controller,
            data_dir=data_dir,
        )
    )
    if say is not None:
        say(f"starting a local Kafka broker on {broker.bootstrap} (stopped at the end) ...")
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass
class BrokerTls:
    """A node's side of TLS and SASL: its certificate chain and private key (PEM, the key
    PKCS#8 and unencrypted), the CA (PEM) whose client certificates the SSL listener accepts,
    and the SCRAM users (name -> password) of the SASL_SSL listener."""

    cert_chain_pem: str
    key_pem: str
    client_ca_pem: str
    scram_users: dict[str, str] = field(default_factory=dict)


def _property(value: str) -> str:
    """A value for a .properties file: Java reads `\\n` as a newline, so a PEM fits one line."""
    return value.strip().replace("\\", "\\\\").replace("\n", "\\n")


@dataclass
class LocalKafka:
    """One node (broker and controller). `start()` formats storage on first use and waits until
    it answers. A node of a cluster names every voter (`voters`) and the replication of Kafka's
    own topics (`replicas`); `LocalKafkaCluster` sets both."""

    settings: Settings
    data_dir: Path
    port: int
    controller_port: int
    process: subprocess.Popen[bytes] | None = None
    node_id: int = 1
    voters: str = ""  # controller.quorum.voters; empty: this node alone
    replicas: int = 1  # of __consumer_offsets and the transaction log
    tls: BrokerTls | None = None
    ssl_port: int | None = None  # SSL listener (mutual TLS), with `tls`
    sasl_ssl_port: int | None = None  # SASL_SSL listener (SCRAM), with `tls`

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
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "broker.pid"

    def _listeners(self) -> tuple[dict[str, int], list[str]]:
        """Listener name -> port, and the properties the TLS listeners need."""
        ports = {"PLAINTEXT": self.port}
        if self.tls is None:
            return ports, []
        if self.ssl_port is None or self.sasl_ssl_port is None:
            raise KafkaError("a broker with TLS needs ssl_port and sasl_ssl_port")
        ports |= {"SSL": self.ssl_port, "SASL_SSL": self.sasl_ssl_port}
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        lines = [
            "ssl.keystore.type=PEM",
            f"ssl.keystore.certificate.chain={_property(self.tls.cert_chain_pem)}",
            f"ssl.keystore.key={_property(self.tls.key_pem)}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.certificates={_property(self.tls.client_ca_pem)}",
            "listener.name.ssl.ssl.client.auth=required",
            f"sasl.enabled.mechanisms={','.join(SCRAM_MECHANISMS)}",
            *(
                f"listener.name.sasl_ssl.{m.lower()}.sasl.jaas.config={jaas}"
                for m in SCRAM_MECHANISMS
            ),
        ]
        return ports, lines

    def _properties(self) -> Path:
        ports, tls_lines = self._listeners()
        listeners = [f"{name}://127.0.0.1:{port}" for name, port in ports.items()]
        protocols = [f"{name}:{name}" for name in ports]
        voters = self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}"
        min_isr = min(2, self.replicas)
        path = self.data_dir / "server.properties"
        path.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node_id}",
                    f"controller.quorum.voters={voters}",
                    "listeners="
                    + ",".join([*listeners, f"CONTROLLER://127.0.0.1:{self.controller_port}"]),
                    f"advertised.listeners={','.join(listeners)}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map="
                    + ",".join([*protocols, "CONTROLLER:PLAINTEXT"]),
                    *tls_lines,
                    f"log.dirs={(self.data_dir / 'logs').resolve()}",
                    "num.partitions=1",
                    f"offsets.topic.replication.factor={self.replicas}",
                    "offsets.topic.num.partitions=4",
                    f"transaction.state.log.replication.factor={self.replicas}",
                    f"transaction.state.log.min.isr={min_isr}",
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

    def format_storage(self, cluster_id: str | None = None) -> None:
        """Format the log directory once (a cluster's nodes share `cluster_id`); SCRAM users are
        created here, in the metadata log, as KRaft requires before the first start."""
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self._properties()
        scram = []
        for name, password in (self.tls.scram_users if self.tls else {}).items():
            for mechanism in SCRAM_MECHANISMS:
                scram.append(f"--add-scram={mechanism}=[name={name},password={password}]")
        # The tool's output goes to the broker log, which a failed start quotes.
        with open(self.log_path, "ab") as out:
            proc = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={cluster_id or new_cluster_id()}",
                    f"--config={props}",
                    *scram,
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
        event(log, "kafka_storage_formatted", data_dir=str(self.data_dir), node=self.node_id)

    def start(self, timeout: float = 90.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self, cluster_id: str | None = None) -> None:
        """Format if needed and start the process, without waiting for it to answer."""
        if port_open("127.0.0.1", self.port):
            raise KafkaError(f"port {self.port} is already in use; is a broker already running?")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.format_storage(cluster_id)
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

    def ready(self, brokers: int = 1) -> bool:
        """Ready means a metadata request succeeds (and lists `brokers` brokers), not just an
        open port."""
        return port_open("127.0.0.1", self.port) and _metadata_ok(self.bootstrap, brokers)

    def wait_ready(self, timeout: float = 90.0, brokers: int = 1) -> None:
        deadline = time.monotonic() + timeout
        last_progress = 0.0
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise KafkaError(
                    f"Kafka exited with {self.process.returncode}; see {self.log_path}:\n"
                    + tail(self.log_path)
                )
            if self.ready(brokers):
                event(log, "kafka_ready", bootstrap=self.bootstrap)
                return
            if time.monotonic() - last_progress > 5:
                event(log, "kafka_waiting", bootstrap=self.bootstrap)
                last_progress = time.monotonic()
            time.sleep(0.3)
        self.stop()
        raise KafkaError(f"Kafka not ready after {timeout:.0f}s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL the node (a crash: no controlled shutdown, nothing flushed)."""
        pid = self.process.pid if self.process else read_pid(self.pid_path)
        if pid is None:
            return
        signal_group(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(30)
        self.process = None
        event(log, "kafka_killed", bootstrap=self.bootstrap)

    def stop(self, timeout: float = 20.0) -> None:
        pid = self.process.pid if self.process else read_pid(self.pid_path)
        if pid is None:
            return
        stop_group(pid, self.process, timeout=timeout, poll=0.2)
        self.pid_path.unlink(missing_ok=True)
        self.process = None
        event(log, "kafka_stopped", bootstrap=self.bootstrap)


@dataclass
class LocalKafkaCluster:
    """Three (or `len(nodes)`) combined broker+controller nodes on loopback forming one KRaft
    quorum: Kafka's own topics with replication 3 and min ISR 2, so one node may die at any
    time. `bootstrap` names every node, as clients of a real cluster do."""

    nodes: list[LocalKafka]

    @classmethod
    def on_ports(cls, settings: Settings, data_dir: Path, ports: list[int]) -> LocalKafkaCluster:
        """A cluster of `len(ports) // 2` nodes: the first half of `ports` for the brokers, the
        second for the controllers (`free_ports(2 * size)` chooses them together)."""
        size = len(ports) // 2
        brokers, controllers = ports[:size], ports[size : 2 * size]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, c in enumerate(controllers))
        return cls(
            [
                LocalKafka(
                    settings=settings,
                    data_dir=data_dir / f"node-{i + 1}",
                    port=brokers[i],
                    controller_port=controllers[i],
                    node_id=i + 1,
                    voters=voters,
                    replicas=min(3, size),
                )
                for i in range(size)
            ]
        )

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self, timeout: float = 120.0) -> None:
        """Start every node at once (a quorum forms only when a majority runs), then wait until
        each answers and sees every broker."""
        cluster_id = new_cluster_id()
        try:
            for node in self.nodes:
                node.launch(cluster_id)
            for node in self.nodes:
                node.wait_ready(timeout, brokers=len(self.nodes))
        except BaseException:
            self.stop(timeout=5)
            raise

    def restart(self, node: LocalKafka, timeout: float = 120.0) -> None:
        """Start a stopped or killed node again on its data; ready once it answers."""
        node.launch()
        node.wait_ready(timeout, brokers=len(self.nodes))

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every node together: one at a time, the last ones would wait for a quorum that
        is already gone before their controlled shutdown gives up."""
        threads = [Thread(target=node.stop, args=(timeout,)) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def _metadata_ok(bootstrap: str, brokers: int = 1) -> bool:
    """A metadata request to the node's PLAINTEXT listener (every local node has one: the nodes
    talk among themselves over it) answers and lists at least `brokers` brokers."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            return len((await admin.describe_cluster())["brokers"]) >= brokers
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
