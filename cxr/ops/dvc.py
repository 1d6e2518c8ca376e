"""Thin calls into DVC's command line and readers of what it records."""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

from cxr.core.io import write_text
from cxr.ops.lineage import DATA_DVC, read_data_dvc

log = logging.getLogger(__name__)


class DvcError(RuntimeError):
    """A DVC command failed; the message holds its output."""


class DvcLockBusy(DvcError):
    """Another DVC process holds the repository lock (worth retrying)."""


class StageKilled(DvcError):
    """A stage's process was killed by a signal (worth retrying: training resumes from its last checkpoint)."""


class RemoteError(DvcError):
    """DVC's remote refused a transfer (no such bucket, no or wrong credentials): a retry does not help."""


class RemoteUnreachable(RemoteError, ConnectionError):
    """DVC's remote did not answer (its object store is down or unreachable): worth retrying."""


# botocore's and DVC's words for an endpoint that does not answer, and for a store that answers "no".
_UNREACHABLE = re.compile(
    r"Could not connect to the endpoint URL|EndpointConnectionError|Connection refused|Connect timeout|"
    r"Read timeout on endpoint|Name or service not known|Temporary failure in name resolution",
    re.IGNORECASE,
)
_REFUSED = re.compile(
    r"Unable to locate credentials|NoCredentialsError|NoSuchBucket|bucket does not exist|InvalidAccessKeyId|"
    r"SignatureDoesNotMatch|AccessDenied|Access Denied|Forbidden",
    re.IGNORECASE,
)

# DVC refuses to run while another process holds the repository lock; that clears when the other run ends.
_DVC_LOCK = re.compile(r"Unable to acquire lock|lock is held|is busy", re.IGNORECASE)
# DVC reports a stage killed by SIGKILL/SIGTERM as a negative exit code (or 128+N through a shell).
_KILLED = re.compile(r"exited with (-\d+|137|143)\b")


def dvc_env() -> dict[str, str]:
    """The environment for DVC and its stages: this interpreter's scripts first on PATH, telemetry off."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def stream_command(
    cmd: list[str], cwd: Path, env: dict[str, str] | None, on_line: Callable[[str], None]
) -> tuple[int, str]:
    """Run ``cmd``, passing each output line to ``on_line`` as it comes; return (exit code, full output).

    The child runs in its own process group, killed on any interruption (a Prefect task timeout, a
    cancellation, Ctrl-C), so a timed-out stage leaves no training process behind.
    """
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        # Bytes, split on newlines only: progress bars redraw with carriage returns, and only the
        # last drawing of a line is worth logging (text mode would make each redraw a line).
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace").rstrip("\r\n").rsplit("\r", 1)[-1])
        lines.put(None)

    reader = threading.Thread(target=pump, name=f"stream-{proc.pid}", daemon=True)
    reader.start()
    out: list[str] = []
    try:
        while True:
            try:
                # A short poll keeps this thread running Python code, so an injected timeout lands promptly.
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            out.append(line)
            on_line(line)
        code = proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    return code, "\n".join(out)


def _kill_group(proc: subprocess.Popen) -> None:
    """Terminate the child's process group (DVC and the stage it started), then make sure it is gone."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_dvc(args: list[str], root: Path, on_line: Callable[[str], None] | None = None) -> str:
    """Run ``dvc ARGS`` in ``root`` with this interpreter, optionally streaming lines; raise DvcError on failure."""
    cmd = [sys.executable, "-m", "dvc", *args]
    log.debug("running %s", " ".join(cmd))
    if on_line is None:
        proc = subprocess.run(cmd, cwd=root, env=dvc_env(), text=True, capture_output=True)
        code, out, shown = proc.returncode, proc.stdout or "", (proc.stdout or "") + (proc.stderr or "")
    else:
        code, out = stream_command(cmd, root, dvc_env(), on_line)
        shown = out
    if code != 0:
        tail = "\n".join(shown.strip().splitlines()[-40:])
        err_type = DvcLockBusy if _DVC_LOCK.search(shown) else StageKilled if _KILLED.search(shown) else DvcError
        raise err_type(f"`dvc {' '.join(args)}` failed in {root} (exit {code}):\n{tail}")
    return out


def track_raw(root: Path, raw_rel: str, meta: dict) -> str:
    """Version ``raw_rel`` in ``data.dvc`` (content hash into the DVC cache), then record ``meta``; return the md5.

    ``meta`` says what the data is (the download's settings). It is written only once DVC has committed the
    data, together with the md5 that commit recorded (``meta.md5``), so an interruption at any point leaves
    either no settings or settings beside the very data they describe: never new settings beside an older
    hash, which a rerun would take as up to date and restore the older data for.
    """
    path = root / DATA_DVC
    outs = (read_data_dvc(root).get("outs") or [{}])[0]
    kept = {k: v for k, v in outs.items() if k != "path"} if outs.get("path") == raw_rel else {}
    # No settings until the data is committed: a record without them is never taken as up to date.
    write_text(path, yaml.safe_dump({"outs": [{"path": raw_rel, **kept}]}, sort_keys=False))
    run_dvc(["commit", "--force", "--quiet", DATA_DVC], root)
    doc = read_data_dvc(root)
    version = (doc.get("outs") or [{}])[0].get("md5")
    if not version:
        raise DvcError(f"{path}: `dvc commit` recorded no md5 for {raw_rel}; run the download step again")
    write_text(path, yaml.safe_dump({**doc, "meta": {**meta, "md5": version}}, sort_keys=False))
    return version


def has_remote(root: Path) -> bool:
    """Whether a DVC remote is configured."""
    return bool(run_dvc(["remote", "list"], root).strip())


def remote_config(root: Path, name: str | None = None) -> dict[str, str]:
    """The settings of remote ``name`` (default: the default remote) from every config level, plus its ``name``."""
    pairs = dict(line.split("=", 1) for line in run_dvc(["config", "--list"], root).splitlines() if "=" in line.strip())
    name = name or pairs.get("core.remote", "")
    prefix = f"remote.{name}."
    return {"name": name, **{k[len(prefix) :]: v for k, v in pairs.items() if k.startswith(prefix)}}


def describe_remote(root: Path) -> str:
    """The default remote in words: its name, URL and the endpoint its object store answers on."""
    try:
        cfg = remote_config(root)
    except DvcError:
        return "the default DVC remote"
    url = cfg.get("url", "?")
    endpoint = cfg.get("endpointurl") or ("the provider's default endpoint" if "://" in url else "a local folder")
    return f"remote '{cfg.get('name') or '?'}' ({url}) at {endpoint}"


def transfer(action: str, root: Path, args: list[str], on_line: Callable[[str], None] | None = None) -> str:
    """``dvc push`` or ``dvc pull`` with ``args``; a failure on the remote's side names the remote and its endpoint.

    An unreachable store raises :class:`RemoteUnreachable` (a ConnectionError: worth a retry), a store that
    refuses (no credentials, no such bucket) :class:`RemoteError`; other failures stay :class:`DvcError`.
    """
    try:
        return run_dvc([action, *args], root, on_line)
    except DvcLockBusy:
        raise
    except DvcError as err:
        text = str(err)
        cls = RemoteUnreachable if _UNREACHABLE.search(text) else RemoteError if _REFUSED.search(text) else None
        if cls is None:
            raise
        what = "unreachable" if cls is RemoteUnreachable else "refused the transfer"
        reason = next((ln.strip() for ln in text.splitlines() if _UNREACHABLE.search(ln) or _REFUSED.search(ln)), text)
        reason = re.sub(r"^ERROR:\s*(unexpected error - )?", "", reason)
        raise cls(f"object store of DVC {describe_remote(root)} {what} during `dvc {action}`: {reason}") from None


def push(root: Path, targets: tuple[str, ...] = (), run_cache: bool = False, on_line=None) -> str:
    """``dvc push`` of ``targets`` (all when empty), with the run-cache when ``run_cache``: see :func:`transfer`."""
    return transfer("push", root, [*(["--run-cache"] if run_cache else []), *targets], on_line)


def stage_status(root: Path, *targets: str) -> dict:
    """``dvc status --json`` (of ``targets``, or everything) as a mapping: empty when nothing is to be done."""
    import json

    out = run_dvc(["status", "--json", *targets], root).strip()
    return json.loads(out) if out else {}


def pipeline_stages(root: Path) -> tuple[str, ...]:
    """The stages ``dvc.yaml`` defines, in its order (each stage after those it depends on)."""
    path = root / "dvc.yaml"
    try:
        stages = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; the pipeline's stages are defined there") from None
    return tuple(stages)


#: DVC's advice after a stage ran: useful typed by hand, noise in a pipeline run's log.
_GIT_HINTS: tuple[str, ...] = (
    "To track the changes with git, run:",
    "git add ",
    "To enable auto staging, run:",
    "dvc config core.autostage true",
)
PUSH_HINT = "Use `dvc push` to send your updates to remote storage."


def is_hint(line: str, remote: bool) -> bool:
    """Whether a line of DVC's output is advice: git staging always; ``dvc push`` unless a remote is set."""
    text = line.strip()
    return text.startswith(_GIT_HINTS) or (text == PUSH_HINT and not remote)
