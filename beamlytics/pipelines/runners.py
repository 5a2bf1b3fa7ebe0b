"""`beamlytics runners`: fetch the Prism and Flink engines (and a Kafka broker) into a cache, list them, fill in options.

Each engine is fetched through its own channel (the Go toolchain for Prism, Maven for Flink's
job server) into `CACHE/<engine>/<version>/`, next to a manifest with each file's SHA-256.
A rerun keeps what still matches its manifest and fetches again what does not, so an
interrupted or tampered install is repaired instead of trusted.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

# Read from the installed distribution, not by importing Beam: `beamlytics --help` stays instant.
BEAM_VERSION = importlib.metadata.version("apache-beam")
CACHE_ENV = "BEAMLYTICS_RUNNERS"
MANIFEST = "manifest.json"

# Prism is built from the Go module of the very Beam release the Python SDK is, so the two
# always speak the same protocol version.
PRISM_VERSION = "v" + BEAM_VERSION
PRISM_PACKAGE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
# The job server of the SDK's own release (Beam guarantees no compatibility across releases), for
# Flink 1.20: the newest 1.x line of the 1.19-2.2 that Beam 2.77 publishes job servers for.
FLINK_VERSION = "1.20"
FLINK_JOB_SERVER = f"org.apache.beam:beam-runners-flink-{FLINK_VERSION}-job-server:{BEAM_VERSION}"
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
# Flink's own jars for a local cluster, as PyPI ships them to PyFlink; the newest 1.20 release.
FLINK_RELEASE = "1.20.5"
FLINK_LIBRARIES = f"apache-flink-libraries=={FLINK_RELEASE}"
# Apache Kafka's own broker (KRaft mode, no ZooKeeper) for the live tests and benchmarks; its jars
# and their dependencies, resolved by Maven from a one-dependency pom.
KAFKA_RELEASE = "4.4.0"
KAFKA_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>beamlytics</groupId><artifactId>kafka-broker</artifactId><version>{KAFKA_RELEASE}</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_RELEASE}</version></dependency>
  </dependencies>
</project>
"""


class EngineError(Exception):
    """An engine could not be fetched, verified or started; the message says which command answered what."""


@dataclass(frozen=True)
class Installed:
    engine: str
    version: str
    path: Path  # the file Beam is pointed at


@dataclass(frozen=True)
class Engine:
    name: str
    version: str
    filename: str  # the file that `fetch` leaves in its target folder
    fetch: Callable[[Path], None]


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "beamlytics" / "runners"


def cache_dir(explicit: str | None = None) -> Path:
    """--cache, else $BEAMLYTICS_RUNNERS, else the user's cache folder."""
    return Path(explicit or os.environ.get(CACHE_ENV) or default_cache()).expanduser().resolve()


_TERMINAL_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


def _run(command: list[str], env: dict[str, str] | None = None) -> None:
    tool = shutil.which(command[0])
    if tool is None:
        raise EngineError(f"{command[0]} not found on PATH; it is needed to fetch this engine")
    result = subprocess.run([tool, *command[1:]], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        plain = _TERMINAL_ESCAPES.sub("", result.stderr + result.stdout)
        lines = [line.strip() for line in plain.splitlines() if line.strip()]
        errors = [line for line in lines if "ERROR" in line or "error" in line.lower()] or lines or ["no output"]
        raise EngineError(f"`{' '.join(command)}` failed (exit {result.returncode}): {errors[0]}")


def fetch_prism(target: Path) -> None:
    _run(["go", "install", f"{PRISM_PACKAGE}@{PRISM_VERSION}"], env={**os.environ, "GOBIN": str(target)})


def fetch_flink_job_server(target: Path) -> None:
    # --update-snapshots: Maven otherwise remembers a failed download and does not retry it for a day.
    _run(["mvn", "--batch-mode", "--quiet", "--update-snapshots", f"{MAVEN_DEPENDENCY_PLUGIN}:copy",
          f"-Dartifact={FLINK_JOB_SERVER}", f"-DoutputDirectory={target}", "-Dmdep.stripVersion=true"])
    copied = target / f"beam-runners-flink-{FLINK_VERSION}-job-server.jar"
    copied.rename(target / flink_jar_name())


def fetch_flink_cluster(target: Path) -> None:
    download = target / "download"
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(download), FLINK_LIBRARIES])
    [archive] = download.glob("apache_flink_libraries-*.tar.gz")
    with tarfile.open(archive) as sdist:
        # Only the jars: lib/ (Flink and log4j) and bin/bash-java-utils.jar, which sizes the JVMs.
        members = [member for member in sdist.getmembers()
                   if member.isfile() and member.name.split("/")[1:3] in (["deps", "lib"], ["deps", "bin"])
                   and member.name.endswith(".jar")]
        for member in members:
            member.name = member.name.split("/deps/", 1)[1]
        sdist.extractall(target, members=members, filter="data")
    shutil.rmtree(download)


def fetch_kafka(target: Path) -> None:
    with tempfile.TemporaryDirectory() as build:
        pom = Path(build) / "pom.xml"
        pom.write_text(KAFKA_POM, encoding="utf-8")
        _run(["mvn", "--batch-mode", "--quiet", "--update-snapshots", "-f", str(pom),
              f"{MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies", "-DincludeScope=runtime",
              f"-DoutputDirectory={target / 'libs'}"])


def flink_jar_name() -> str:
    return f"beam-runners-flink-{FLINK_VERSION}-job-server-{BEAM_VERSION}.jar"


ENGINES = {
    "prism": Engine("prism", PRISM_VERSION, "prism", fetch_prism),
    "flink": Engine("flink", f"{FLINK_VERSION}/beam-{BEAM_VERSION}", flink_jar_name(),
                    fetch_flink_job_server),
    "flink-cluster": Engine("flink-cluster", FLINK_RELEASE, f"lib/flink-dist-{FLINK_RELEASE}.jar", fetch_flink_cluster),
    "kafka": Engine("kafka", KAFKA_RELEASE, f"libs/kafka_2.13-{KAFKA_RELEASE}.jar", fetch_kafka),
}


def _folder(cache: Path, engine: Engine) -> Path:
    return cache / engine.name / engine.version.replace("/", "-")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): _sha256(path)
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}


def installed(engine: Engine, cache: Path) -> Installed | None:
    """The engine's file if it is in the cache and every file still matches its manifest."""
    folder = _folder(cache, engine)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    path = folder / engine.filename
    if manifest.get("version") != engine.version or not path.is_file():
        return None
    if manifest.get("sha256") != _checksums(folder):
        return None
    return Installed(engine.name, engine.version, path)


def install(engine: Engine, cache: Path) -> tuple[Installed, bool]:
    """Fetch `engine` unless a verified copy is cached; return it and whether it was fetched now."""
    present = installed(engine, cache)
    if present is not None:
        return present, False
    cache.mkdir(parents=True, exist_ok=True)
    # The cache may sit inside a checkout: its binaries must never be committed.
    (cache / ".gitignore").write_text("*\n", encoding="utf-8")
    folder = _folder(cache, engine)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Fetch beside the final folder and swap it in whole, so a failed fetch leaves no half install.
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".fetch-") as staging:
        staged = Path(staging) / "engine"
        staged.mkdir()
        engine.fetch(staged)
        fetched = staged / engine.filename
        if not fetched.is_file():
            raise EngineError(f"fetching {engine.name} left no {engine.filename}")
        manifest = {"engine": engine.name, "version": engine.version, "sha256": _checksums(staged)}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        staged.rename(folder)
    return Installed(engine.name, engine.version, folder / engine.filename), True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@dataclass
class LocalFlinkCluster:
    """A Flink session cluster, one JobManager and one TaskManager, listening on localhost only.

    Started straight from the jars with `java`, the way Flink's own scripts do it: Flink's
    BashJavaUtils turns the memory settings into the JVM flags and the dynamic properties.
    """

    home: Path  # the flink-cluster engine folder: lib/*.jar, bin/bash-java-utils.jar
    workdir: Path
    slots: int = 2
    rest_port: int = 0
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"localhost:{self.rest_port}"

    def _configure(self) -> Path:
        self.rest_port = _free_port()
        conf = self.workdir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        settings = {
            "jobmanager.rpc.address": "localhost", "jobmanager.bind-host": "localhost",
            "jobmanager.rpc.port": _free_port(), "taskmanager.host": "localhost", "taskmanager.bind-host": "localhost",
            "rest.address": "localhost", "rest.bind-address": "localhost", "rest.port": self.rest_port,
            "taskmanager.numberOfTaskSlots": self.slots, "parallelism.default": self.slots,
            # Small enough for a shared 2-core machine, large enough for Beam's job graphs.
            "jobmanager.memory.process.size": "768m", "taskmanager.memory.process.size": "1280m",
            "io.tmp.dirs": str(self.workdir / "tmp"),
        }
        (conf / "flink-conf.yaml").write_text("".join(f"{key}: {value}\n" for key, value in settings.items()),
                                              encoding="utf-8")
        return conf

    def _java(self, *arguments: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise EngineError("java not found on PATH; a local Flink cluster needs Java 11 or 17")
        classpath = os.pathsep.join([str(self.home / "lib" / "*"), str(self.home / "bin" / "bash-java-utils.jar")])
        return [java, "-cp", classpath, *arguments]

    def _resource_flags(self, conf: Path, which: str) -> tuple[list[str], list[str]]:
        result = subprocess.run(self._java("org.apache.flink.runtime.util.bash.BashJavaUtils", which,
                                           "--configDir", str(conf)), capture_output=True, text=True, check=False)
        marker = "BASH_JAVA_UTILS_EXEC_RESULT:"
        lines = [line[len(marker):].split() for line in result.stdout.splitlines() if line.startswith(marker)]
        if result.returncode != 0 or len(lines) != 2:
            raise EngineError(f"Flink's BashJavaUtils {which} failed (exit {result.returncode})")
        return lines[0], lines[1]

    def start(self, timeout: float = 180.0) -> str:
        conf = self._configure()
        logs = self.workdir / "log"
        logs.mkdir(exist_ok=True)
        roles = [
            ("jobmanager", "GET_JM_RESOURCE_PARAMS", "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"),
            ("taskmanager", "GET_TM_RESOURCE_PARAMS", "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"),
        ]
        for role, which, entrypoint in roles:
            jvm, dynamic = self._resource_flags(conf, which)
            with open(logs / f"{role}.out", "wb") as output:
                self.processes.append(subprocess.Popen(
                    self._java(*jvm, f"-Dlog.file={logs / f'{role}.log'}", entrypoint, "--configDir", str(conf),
                               *dynamic), stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in self.processes):
                self.stop()
                raise EngineError(f"a Flink process exited at start; see {logs}")
            if self.overview().get("slots-total") == self.slots:
                return self.address
            time.sleep(1)
        self.stop()
        raise EngineError(f"the local Flink cluster offered no {self.slots} slots in {timeout:.0f} s; see {logs}")

    def overview(self) -> dict:
        try:
            with urllib.request.urlopen(f"http://{self.address}/overview", timeout=5) as response:
                return json.load(response)
        except OSError:
            return {}

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def _given(beam_args: Sequence[str], option: str) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in beam_args)


def _runner(beam_args: Sequence[str]) -> str | None:
    for index, arg in enumerate(beam_args):
        if arg.startswith("--runner="):
            return arg.split("=", 1)[1]
        if arg == "--runner" and index + 1 < len(beam_args):
            return beam_args[index + 1]
    return None


def with_engine_options(beam_args: Sequence[str], cache: Path | None = None) -> list[str]:
    """Beam options plus the cached engine's location for --runner=PrismRunner/FlinkRunner, where not given."""
    args = list(beam_args)
    runner = (_runner(args) or "").lower().removesuffix("runner")
    cache = cache or cache_dir()
    if runner == "prism" and not _given(args, "--prism_location"):
        prism = installed(ENGINES["prism"], cache)
        if prism is not None:
            args.append(f"--prism_location={prism.path}")
    elif runner == "flink":
        if not _given(args, "--flink_job_server_jar"):
            flink = installed(ENGINES["flink"], cache)
            if flink is not None:
                args.append(f"--flink_job_server_jar={flink.path}")
        if not _given(args, "--flink_version"):
            args.append(f"--flink_version={FLINK_VERSION}")
        if not _given(args, "--flink_master"):
            args.append("--flink_master=[local]")
    return args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["list", "install"], default="list",
                        help="list (default): what is installed; install: fetch engines")
    parser.add_argument("engines", nargs="*", metavar="ENGINE",
                        help=f"engines to install: {', '.join(ENGINES)} (default: all)")
    parser.add_argument("--cache", metavar="DIR",
                        help=f"engine cache folder (default ${CACHE_ENV}, else {default_cache()})")


def run(args: argparse.Namespace) -> int:
    cache = cache_dir(args.cache)
    unknown = [name for name in args.engines if name not in ENGINES]
    if unknown or (args.engines and args.action == "list"):
        what = f"unknown engine: {unknown[0]}" if unknown else "engines are named only with install"
        print(f"beamlytics runners: error: {what} (choose from {', '.join(ENGINES)})", file=sys.stderr)
        return 2
    if args.action == "list":
        for engine in ENGINES.values():
            found = installed(engine, cache)
            print(f"{engine.name}\t{engine.version}\t{found.path if found else 'not installed'}")
        print(f"cache: {cache}")
        return 0
    status = 0
    for name in args.engines or list(ENGINES):
        try:
            found, fetched = install(ENGINES[name], cache)
        except EngineError as error:
            # One engine that cannot be had does not keep the others from being installed.
            print(f"beamlytics runners: error: {name}: {error}", file=sys.stderr)
            status = 2
            continue
        print(f"{name}\t{found.version}\t{found.path}\t{'installed' if fetched else 'already installed, verified'}")
    return status
