"""Real servers for integration tests: free loopback ports, readiness checks, start and stop by PID.

Every server binds 127.0.0.1 on a free port, runs in its own process group (so a stop reaches the workers
it forks) and is stopped by PID, never by name. Generic helpers first (any HTTP server: MLflow, Prefect),
then a throw-away PostgreSQL cluster and an MLflow tracking server on it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


# ----------------------------------------------------------------------------------------------- generic


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A loopback port with no listener (for tests of an unreachable server)."""
    return free_port()


def tail(path: Path | None, chars: int = 3000) -> str:
    """The end of a log file, for failure messages."""
    if path is None or not Path(path).is_file():
        return ""
    return Path(path).read_text(errors="replace")[-chars:]


@dataclass
class Process:
    """A started server process: its PID (also its process group) and its log."""

    name: str
    popen: subprocess.Popen
    log: Path
    url: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid


def start_process(
    name: str, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Process:
    """Start ``cmd`` in a new session (its own process group), stdout and stderr to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        popen = subprocess.Popen(
            list(cmd),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **TELEMETRY_OFF, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    return Process(name, popen, log)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (and is not a zombie of ours)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A daemon's zombie (parent is init, not yet reaped) has exited for our purposes.
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout_s: float = 15.0, group: bool = True) -> None:
    """Signal a PID (its whole process group when ``group``), wait, then SIGKILL what is left."""

    def send(s: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, s)
            else:
                os.kill(pid, s)

    send(sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    send(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)


def stop_process(proc: Process, timeout_s: float = 15.0) -> None:
    """Stop a process started by :func:`start_process` and every process in its group."""
    stop_pid(proc.pid, signal.SIGTERM, timeout_s, group=True)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout=5)
    # Workers that ignored SIGTERM may outlive their parent; they are still in its process group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for_http(url: str, timeout_s: float = 120.0, proc: Process | None = None, expect: int = 200) -> None:
    """Poll ``url`` until it answers ``expect``; fail early (with the log's tail) when ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode} before {url} answered:\n{tail(proc.log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == expect:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as err:
            last = str(err)
        time.sleep(0.5)
    raise TimeoutError(
        f"{url} did not answer {expect} within {timeout_s:.0f} s (last: {last})\n{tail(proc.log) if proc else ''}"
    )


@contextlib.contextmanager
def running_prefect_server(home: Path, env: dict[str, str], timeout_s: float = 240.0) -> Iterator[str]:
    """``prefect server start`` on a free loopback port with PREFECT_HOME ``home``; yields its API URL when healthy.

    ``env`` is the server's environment (laid over ``os.environ``). A cold server migrates its database
    before it answers, slowly on a shared 2-core machine: hence the generous default ``timeout_s``.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://{LOOPBACK}:{port}/api"
    env = {**env, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_UI_ENABLED": "false"}
    prefect = Path(sys.executable).parent / "prefect"
    proc = start_process(
        "prefect server",
        [str(prefect), "server", "start", "--host", LOOPBACK, "--port", str(port)],
        home / "server.log",
        env,
        home,
    )
    try:
        wait_for_http(f"{api}/health", timeout_s, proc)
        yield api
    finally:
        stop_process(proc)


# ------------------------------------------------------------------------------------------------ PostgreSQL


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL binary folder holding ``initdb``, or one on PATH; None when absent."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def postgres_unavailable() -> str | None:
    """Why a PostgreSQL cluster cannot be started here, or None when it can."""
    if postgres_bin() is None:
        return (
            "PostgreSQL is not installed (no initdb); install it with: apt-get update && apt-get install -y postgresql"
        )
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the cluster as (postgres refuses root)"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing: cannot start postgres as the 'postgres' user"
    return None


@dataclass
class PostgresCluster:
    """A throw-away cluster: data folder, loopback port, postmaster PID; trust auth for user ``postgres``."""

    bin: Path
    data: Path
    port: int
    pid: int
    log: Path
    user: str = "postgres"
    as_user: list[str] = field(default_factory=list)

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        """A SQLAlchemy URL for a database of this cluster."""
        return f"{driver}://{self.user}@{LOOPBACK}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create a database; returns its URL."""
        subprocess.run(
            [str(self.bin / "createdb"), "-h", LOOPBACK, "-p", str(self.port), "-U", self.user, name],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return self.url(name)


def _run_as(as_user: list[str], cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([*as_user, *cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_postgres(timeout_s: float = 120.0) -> PostgresCluster:
    """initdb a cluster in a fresh temporary folder and start it with pg_ctl on a free loopback port.

    As root the cluster belongs to the ``postgres`` user (postgres refuses to run as root): the folder is made
    in the system temporary folder (pytest's tmp folders are private to root) and chowned to it, and
    initdb/pg_ctl run through ``runuser -u postgres``.
    """
    why = postgres_unavailable()
    if why:
        raise RuntimeError(why)
    bin_dir = postgres_bin()
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="cxr-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    as_user: list[str] = []
    user = "postgres"
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "postgres.log"
    try:
        _run_as(
            as_user,
            [str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
            timeout=timeout_s,
        )
        port = free_port()
        opts = f"-p {port} -c listen_addresses={LOOPBACK} -k {root} -c fsync=off -c max_connections=100"
        _run_as(
            as_user,
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(log),
                "-w",
                "-t",
                str(int(timeout_s)),
                "start",
            ],
            timeout=timeout_s + 10,
        )
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except BaseException:
        stop_postgres_folder(root)
        raise
    return PostgresCluster(bin_dir, data, port, pid, log, user, as_user)


def stop_postgres_folder(root: Path, pid: int | None = None) -> None:
    """Fast-shutdown the postmaster by PID (SIGINT) and remove the cluster's folder."""
    pid_file = root / "data" / "postmaster.pid"
    if pid is None and pid_file.is_file():
        with contextlib.suppress(ValueError, IndexError, OSError):
            pid = int(pid_file.read_text().split()[0])
    if pid is not None:
        # SIGINT is postgres's "fast" shutdown; the postmaster stops its own backends. Not a process group:
        # pg_ctl daemonised it into a session of its own.
        stop_pid(pid, signal.SIGINT, timeout_s=30, group=False)
    shutil.rmtree(root, ignore_errors=True)


def stop_postgres(cluster: PostgresCluster) -> None:
    """Stop the cluster by its postmaster PID and delete it."""
    stop_postgres_folder(cluster.data.parent, cluster.pid)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A running throw-away cluster, stopped and removed on exit."""
    cluster = start_postgres()
    try:
        yield cluster
    finally:
        stop_postgres(cluster)


# ------------------------------------------------------------------------------------------------ MLflow


def start_mlflow(
    backend_uri: str,
    artifacts: Path | str,
    log: Path,
    port: int | None = None,
    timeout_s: float = 180.0,
    env: dict[str, str] | None = None,
) -> Process:
    """``mlflow server`` on 127.0.0.1 with a database backend and proxied artifacts; returns once /health is OK.

    ``artifacts`` is a folder or an object store URI (``s3://bucket/prefix``, with the store's endpoint and
    credentials in ``env``).
    """
    port = port or free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow_cli) if mlflow_cli.exists() else "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = start_process("mlflow server", cmd, log, env)
    proc.url = f"http://{LOOPBACK}:{port}"
    try:
        wait_for_http(proc.url + "/health", timeout_s, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str, artifacts: Path | str, log: Path, env: dict[str, str] | None = None
) -> Iterator[Process]:
    """A running MLflow tracking server, stopped by PID on exit."""
    proc = start_mlflow(backend_uri, artifacts, log, env=env)
    try:
        yield proc
    finally:
        # uvicorn's graceful shutdown waits on clients' keep-alive connections; the database has committed.
        stop_process(proc, timeout_s=5)


# ------------------------------------------------------------------------------------------------ object store

#: Credentials for the S3 store in the tests (moto accepts any; real stores check them).
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "cxr-test",
    "AWS_SECRET_ACCESS_KEY": "cxr-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_unavailable() -> str | None:
    """Why an S3 store and its clients cannot run here (the ``team`` extra is missing), or None when they can."""
    import importlib.util

    missing = [m for m in ("moto", "boto3", "dvc_s3", "flask") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} missing: install the team extra and moto[server] (pip install -e '.[dev,team]')"
    return None


def start_s3(log: Path, port: int | None = None, timeout_s: float = 60.0) -> Process:
    """moto's S3 server (a real S3 HTTP endpoint, in memory) on 127.0.0.1; returns once it answers.

    Its buckets live in the process: a stop loses them, a restart on the same ``port`` is an empty store.
    """
    port = port or free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]
    proc = start_process("s3 (moto)", cmd, log, S3_CREDENTIALS)
    proc.url = f"http://{LOOPBACK}:{port}"
    try:
        wait_for_http(proc.url + "/moto-api/", timeout_s, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[Process]:
    """A running S3 store, stopped by PID on exit."""
    proc = start_s3(log)
    try:
        yield proc
    finally:
        stop_process(proc, timeout_s=5)


def create_bucket(endpoint: str, bucket: str) -> None:
    """Create ``bucket`` on the S3 store at ``endpoint``."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    s3.create_bucket(Bucket=bucket)


def list_objects(endpoint: str, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every object under ``prefix`` in ``bucket``: key to size."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    out: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
    return out


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    }
