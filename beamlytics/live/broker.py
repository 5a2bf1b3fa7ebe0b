"""A Kafka broker on localhost for tests and benchmarks: Apache Kafka's own release, KRaft mode, temp folders.

Started straight from the jars that `beamlytics runners install kafka` fetched, one JVM that
is both controller and broker, listening on free ports of localhost only.
"""
from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from beamlytics.pipelines.runners import ENGINES, EngineError, _free_port, cache_dir, installed


def kafka_libs() -> Path | None:
    """The cached broker's jar folder, or None when `beamlytics runners install kafka` has not fetched it."""
    found = installed(ENGINES["kafka"], cache_dir())
    return found.path.parent if found else None


@dataclass
class KafkaBroker:
    libs: Path
    workdir: Path
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.port}"

    def _java(self, *arguments: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise EngineError("java not found on PATH; the Kafka broker needs Java 17 or later")
        return [java, "-Xms128m", "-Xmx512m", "-cp", f"{self.libs}/*", *arguments]

    def start(self, timeout: float = 90.0) -> str:
        self.port, controller = _free_port(), _free_port()
        data = self.workdir / "data"
        settings = {
            "process.roles": "broker,controller", "node.id": 1,
            "controller.quorum.voters": f"1@localhost:{controller}",
            "listeners": f"PLAINTEXT://localhost:{self.port},CONTROLLER://localhost:{controller}",
            "advertised.listeners": f"PLAINTEXT://localhost:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data), "num.partitions": 1, "group.initial.rebalance.delay.ms": 0,
            "offsets.topic.replication.factor": 1, "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1, "share.coordinator.state.topic.replication.factor": 1,
        }
        config = self.workdir / "server.properties"
        self.workdir.mkdir(parents=True, exist_ok=True)
        config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()), encoding="utf-8")
        cluster_id = _cluster_id()
        formatted = subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)),
                                   capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if formatted.returncode != 0:
            raise EngineError(f"formatting Kafka's storage failed (exit {formatted.returncode}): "
                              f"{(formatted.stderr or formatted.stdout).strip().splitlines()[-1:]}")
        log = open(self.workdir / "broker.log", "wb")
        self.process = subprocess.Popen(self._java("kafka.Kafka", str(config)), stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineError(f"the Kafka broker exited at start; see {self.workdir / 'broker.log'}")
            if self._answers():
                return self.bootstrap
            time.sleep(0.5)
        self.stop()
        raise EngineError(f"the Kafka broker did not answer in {timeout:.0f} s; see {self.workdir / 'broker.log'}")

    def _answers(self) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
        except (KafkaError, OSError):
            return False
        try:
            return bool(admin.describe_cluster().get("brokers"))
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _cluster_id() -> str:
    """A random Kafka cluster id (URL-safe base64 of 16 bytes) not starting with '-', which the storage
    tool would take for an option (Kafka's own `Uuid.randomUuid` avoids those for the same reason)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text
