"""The EMR Serverless job runs of infra/'s template, run on a Spark standalone cluster on this machine.

``Cluster`` starts a master and workers as separate processes, from the pinned pyspark.
``job_runs`` reads the StartJobRun requests out of the synthesized CloudFormation template, and
``submit_command`` turns one into a ``spark-submit --master spark://...`` command line by this
mapping, and nothing else:

=====================================================  ==============================================
In the template (EMR Serverless)                       Here (standalone, client mode)
=====================================================  ==============================================
``s3://<bucket>/artifacts/<file>``                     ``build/emr/<file>`` (what deploy-artifacts uploads)
``spark.emr-serverless.driverEnv.<NAME>=<value>``      ``<NAME>=<value>`` in the driver's environment
driver's working directory with ``./environment``      a folder with the environment unpacked there
``python3.11``, the release's interpreter              a bare ``venv`` of this Python: no packages
``/usr/share/aws/delta/lib/delta-{spark,storage}.jar``  the same Delta's jars from Maven (``fruits jars``),
  and the release's S3 connector                         with hadoop-aws and the AWS SDK
``spark.executor.cores``                               the workers' cores
``spark.dynamicAllocation.maxExecutors``               the number of workers
=====================================================  ==============================================

The environment variables that point the jobs at the local AWS emulator (``FRUITS_ENDPOINT_URL``) are
added to the driver's; the event log is turned on so the test can see where the tasks ran.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import tarfile
import time
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

from fruits.spark import jars
from fruits.spark.bundle import ARTIFACTS, ENVIRONMENT
from fruits.spark.release import PYTHON_EXECUTABLE

SPARK_HOME = Path(pyspark.__file__).parent
EMR_DELTA_DIR = "/usr/share/aws/delta/lib/"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s: {log.read_text()[-2000:]}")


@dataclass
class Cluster:
    """A standalone master and ``workers`` workers of ``cores`` cores each, on 127.0.0.1."""

    root: Path
    workers: int = 2
    cores: int = 1
    memory: str = "2g"
    url: str = ""
    _processes: list[subprocess.Popen] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1"}

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        process = subprocess.Popen(
            [str(SPARK_HOME / "bin" / "spark-class"), *args],
            env=self.env(),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._processes.append(process)
        return process

    def __enter__(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        master = self._start(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(_free_port()),
        )
        _wait_for_port(port, master, self.root / "master.log")
        self.url = f"spark://127.0.0.1:{port}"
        for i in range(self.workers):
            worker_port = _free_port()
            worker = self._start(
                f"worker-{i}",
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "127.0.0.1",
                "--port",
                str(worker_port),
                "--webui-port",
                str(_free_port()),
                "--cores",
                str(self.cores),
                "--memory",
                self.memory,
                "--work-dir",
                str(self.root / f"work-{i}"),
                self.url,
            )
            _wait_for_port(worker_port, worker, self.root / f"worker-{i}.log")
        return self

    def kill_executor(self, worker: int) -> int | None:
        """SIGKILL the executor JVM that worker ``worker`` runs (as a lost node would); its pid, or None."""
        work = (self.root / f"work-{worker}").resolve()
        for proc in Path("/proc").iterdir():
            try:
                command = (proc / "cmdline").read_bytes()
                cwd = (proc / "cwd").resolve()
            except (OSError, ValueError):
                continue
            if b"CoarseGrainedExecutorBackend" in command and cwd.is_relative_to(work):
                os.kill(int(proc.name), 9)
                return int(proc.name)
        return None

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                os.killpg(process.pid, 15)
        for process in self._processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
        # Each executor unpacked the environment (~0.7 GB): keep only the executors' logs.
        for executor in self.root.glob("work-*/app-*/*"):
            for path in executor.iterdir():
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.name not in ("stdout", "stderr"):
                    path.unlink()


def resolve(value: object, refs: dict[str, str]) -> object:
    """A CloudFormation value with ``Ref``, ``Fn::GetAtt`` and ``Fn::Join`` replaced by ``refs``."""
    if isinstance(value, dict) and len(value) == 1:
        ((kind, arg),) = value.items()
        if kind == "Ref":
            return refs[arg]
        if kind == "Fn::GetAtt":
            return refs[".".join(arg)]
        if kind == "Fn::Join":
            return arg[0].join(str(resolve(part, refs)) for part in arg[1])
    if isinstance(value, dict):
        return {k: resolve(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, refs) for v in value]
    return value


def job_runs(template: dict, bucket: str) -> dict[str, dict]:
    """The StartJobRun requests in the template by job name (``stream``, ``pca-refit``, ``maintain``),
    with the bucket's name as ``bucket`` and the other references as placeholders."""
    refs = {}
    for logical_id, resource in template["Resources"].items():
        kind = resource["Type"]
        refs[logical_id] = bucket if kind == "AWS::S3::Bucket" else f"<{logical_id}>"
        for attribute in ("ApplicationId", "Arn"):
            refs[f"{logical_id}.{attribute}"] = f"<{logical_id}.{attribute}>"
    runs = {}
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Scheduler::Schedule":
            request = resource["Properties"]["Target"]["Input"]
        elif resource["Type"] == "Custom::AWS":
            request = resource["Properties"]["Create"]
        else:
            continue
        request = resolve(request, refs)
        request = json.loads(request) if isinstance(request, str) else request
        request = request.get("parameters", request)  # the stream's custom resource: an SDK call
        runs[request["name"].split("-", 2)[-1]] = request
    return runs


@dataclass
class Submit:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def bare_python(folder: Path) -> Path:
    """An interpreter of this Python version with nothing installed: the release's, as the jobs see it."""
    if not (folder / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=False, symlinks=True).create(folder)
    return folder / "bin" / "python"


def driver_folder(folder: Path, bundle: Path) -> Path:
    """The driver's working directory with ``./environment`` unpacked, as EMR Serverless's driver has it."""
    if not (folder / "environment").is_dir():
        with tarfile.open(bundle / ENVIRONMENT) as archive:
            archive.extractall(folder / "environment", filter="data")
    return folder


def submit_command(
    request: dict, *, cluster: Cluster, bundle: Path, workdir: Path, extra_env: dict[str, str], event_log: Path
) -> Submit:
    """The spark-submit command line, driver environment and working directory of one job run."""
    bucket_artifacts = request["jobDriver"]["sparkSubmit"]["entryPoint"].rsplit(ARTIFACTS, 1)[0] + ARTIFACTS
    python = str(bare_python(workdir / "python"))

    def local(value: str) -> str:
        value = value.replace(bucket_artifacts, f"{bundle}/")
        return python if value == PYTHON_EXECUTABLE else value

    driver_env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1"}
    driver_env.pop("PYTHONPATH", None)
    driver_env.pop("VIRTUAL_ENV", None)
    conf: dict[str, str] = {}
    words = shlex.split(request["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"])
    for flag, setting in zip(words[::2], words[1::2]):
        assert flag == "--conf", f"only --conf is mapped, not {flag}"
        key, value = setting.split("=", 1)
        if key.startswith("spark.emr-serverless.driverEnv."):
            driver_env[key.removeprefix("spark.emr-serverless.driverEnv.")] = local(value)
        elif key == "spark.jars":
            emr = value.split(",")
            assert all(j.startswith(EMR_DELTA_DIR) for j in emr), emr
            conf[key] = ",".join(str(j) for j in jars.fetch())
        elif key == "spark.executor.cores":
            conf[key] = str(cluster.cores)
        elif key == "spark.dynamicAllocation.maxExecutors":
            conf[key] = str(cluster.workers)
        else:
            conf[key] = ",".join(local(v) for v in value.split(","))
    conf |= {"spark.eventLog.enabled": "true", "spark.eventLog.dir": str(event_log), "spark.eventLog.compress": "false"}
    event_log.mkdir(parents=True, exist_ok=True)
    argv = [str(SPARK_HOME / "bin" / "spark-submit"), "--master", cluster.url, "--deploy-mode", "client"]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    argv += [
        local(request["jobDriver"]["sparkSubmit"]["entryPoint"]),
        *request["jobDriver"]["sparkSubmit"]["entryPointArguments"],
    ]
    return Submit(argv=argv, env=driver_env | extra_env, cwd=driver_folder(workdir / "driver", bundle))


@contextmanager
def running(submit: Submit, log: Path) -> Iterator[subprocess.Popen]:
    """A job run in the background; stopped (as CancelJobRun would) when the block ends."""
    process = subprocess.Popen(
        submit.argv,
        env=submit.env,
        cwd=submit.cwd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)


def events(event_log: Path, kind: str) -> list[dict]:
    """The events of one kind (``SparkListenerExecutorRemoved``, ...) in the applications logged."""
    found = []
    for path in sorted(event_log.rglob("events_*")):
        with path.open() as lines:
            found += [e for e in map(json.loads, lines) if e["Event"] == kind]
    return found


def python_rows_by_executor(event_log: Path) -> dict[str, int]:
    """The rows that successful tasks running Python (the pandas UDF: their metrics count the data sent to
    Python workers) put out, by the executor that ran them (``driver`` if the driver did), over the
    applications logged."""
    counts: dict[str, int] = {}
    for path in sorted(event_log.rglob("events_*")):
        with path.open() as lines:
            for line in lines:
                event = json.loads(line)
                if event["Event"] != "SparkListenerTaskEnd" or event["Task End Reason"]["Reason"] != "Success":
                    continue
                metrics = {a.get("Name", ""): a.get("Update") for a in event["Task Info"].get("Accumulables", [])}
                if "data sent to Python workers" in metrics:
                    executor = event["Task Info"]["Executor ID"]
                    counts[executor] = counts.get(executor, 0) + int(metrics.get("number of output rows", 0))
    return counts
