"""The ``cxr`` command: one subcommand per pipeline step, each a thin call into the step's function."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from cxr.core.config import Settings, load_settings
from cxr.core.logs import LOG_FORMAT, quiet_clients
from cxr.core.sections import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Chest X-ray classification pipeline.")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="The params file.")]
RootOpt = Annotated[Path, typer.Option("--root", help="Project root: paths in params are relative to it.")]


#: Offline-friendly defaults for every entry point (CLI, tests, benchmarks); the user's own values win.
QUIET_ENV: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    # A first Prefect run in a new PREFECT_HOME builds its database, which can exceed the 20 s default.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def quiet_telemetry() -> None:
    """No analytics calls from DVC, Prefect, MLflow or Albumentations; a patient Prefect start."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


@app.callback()
def main() -> None:
    """Chest X-ray classification pipeline."""
    # Before any subcommand imports Prefect: Prefect reads its settings once, when it is first imported.
    quiet_telemetry()


def setup(params: Path, root: Path | None) -> tuple[Settings, Path]:
    """Validate params before any work and configure logging; exits with the error on bad params."""
    try:
        settings = load_settings(params)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=settings.base.log_level,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    quiet_clients(settings.base.log_level)
    return settings, (root or params.resolve().parent).resolve()


def error_line(err: BaseException) -> str:
    """What a failure says on one line: the file, key or endpoint it names, and why."""
    if isinstance(err, OSError) and err.filename:
        where = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
        return f"error: {where}: {err.strerror or type(err).__name__}"
    known = (ValueError, OSError, RuntimeError, LookupError)
    text = str(err).strip() or type(err).__name__
    return f"error: {text}" if isinstance(err, known) else f"error: {type(err).__name__}: {text}"


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as err:  # noqa: BLE001 - every failure ends in one line; the traceback is logged at DEBUG
        logging.getLogger("cxr").debug("step failed", exc_info=True)
        typer.echo(error_line(err), err=True)
        raise typer.Exit(1) from None


@app.command()
def download(params: ParamsOpt = Path("params.yaml"), root: RootOpt = None) -> None:
    """Fetch or generate the raw data and version it in data.dvc."""
    from cxr.data.download import download as step

    s, r = setup(params, root)
    res = _run(step, s.base, s.download, s.paths(r))
    typer.echo(f"data version {res.data_version} ({'unchanged' if res.skipped else 'new'}): {res.counts}")


@app.command()
def split(params: ParamsOpt = Path("params.yaml"), root: RootOpt = None) -> None:
    """Write the seeded valid/test/train manifest and the data report."""
    from cxr.data.split import split

    s, r = setup(params, root)
    res = _run(split, s.base, s.split, s.paths(r))
    typer.echo(f"manifest {res.manifest}: {res.counts}")


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint when it matches.")] = True,
    track: Annotated[
        bool, typer.Option(help="Log each epoch to a live MLflow run as it ends (best-effort: a warning when down).")
    ] = True,
) -> None:
    """Train and keep the best checkpoint on validation."""
    from cxr.ops.trainrun import live_training
    from cxr.training.loop import train as step

    s, r = setup(params, root)
    paths = s.paths(r)
    with live_training(s, r, resume, track) as live:
        res = _run(step, s.train, s.base, paths, resume, live.log_epoch if live.active else None)
        summary = {"best_epoch": res.best_epoch, "best_score": res.best_score, "epochs": res.epochs_run}
        live.record_result(paths.history, res.best_checkpoint, {**summary, "images_per_s": res.images_per_s})
    typer.echo(f"best epoch {res.best_epoch}: {s.train.monitor}={res.best_score:.4f} ({res.images_per_s:.0f} img/s)")


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), root: RootOpt = None) -> None:
    """Score the best checkpoint on the test split."""
    from cxr.evaluation.evaluate import evaluate as step

    s, r = setup(params, root)
    res = _run(step, s.base, s.evaluate, s.paths(r), s.train.device)
    auc = "n/a" if res.macro_auc is None else f"{res.macro_auc:.4f}"
    typer.echo(f"test accuracy {res.accuracy:.4f}, macro AUC {auc}")


@app.command()
def gradcam(params: ParamsOpt = Path("params.yaml"), root: RootOpt = None) -> None:
    """Grad-CAM overlays and explanation metrics on the test split."""
    from cxr.evaluation.gradcam import gradcam

    s, r = setup(params, root)
    # The evaluate step's resamples and level: every figure of the test split has its interval drawn alike.
    res = _run(gradcam, s.base, s.gradcam, s.paths(r), s.train.device, s.evaluate.n_boot, s.evaluate.ci)
    typer.echo(f"{res.images} overlays in {res.folder}")


@app.command()
def report(params: ParamsOpt = Path("params.yaml"), root: RootOpt = None) -> None:
    """One self-contained HTML page: metrics with intervals, figures, Grad-CAM, data and params."""
    from cxr.reporting.report import report

    s, r = setup(params, root)
    res = _run(report, s, s.paths(r))
    typer.echo(f"report in {res}")


@app.command()
def register(
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Register even when a version has the same inputs.")] = False,
) -> None:
    """Log the pipeline run to MLflow and register the model (nothing new when its inputs are unchanged)."""
    from cxr.registry.register import register as step

    s, r = setup(params, root)
    res = _run(step, s, s.paths(r), params.resolve(), force)
    typer.echo(res.summary())


def _registry(params: Path, root: Path | None):
    """Settings, project root and an MLflow client on the project's tracking store."""
    from mlflow import MlflowClient

    from cxr.ops.tracking import check_tracking, tracking_uri

    s, r = setup(params, root)
    uri = tracking_uri(r)
    _run(check_tracking, uri)
    return s, r, MlflowClient(uri)


ActorOpt = Annotated[
    str | None,
    typer.Option("--by", "--actor", help="Who does it (recorded); default: the git user, else the system account."),
]

#: ``cxr gate``'s exit status when the gate refuses the version (1 is an error, 2 bad params or usage).
GATE_REFUSED = 3
#: ``cxr gate``'s exit status when the version passes but drift holds it back (``drift.block_promotion``).
GATE_HELD = 4
#: ``cxr drift``'s exit status when the check flags drift.
DRIFT_FLAGGED = 3


@app.command(
    epilog=f"Exit codes: 0 the version passed (and was promoted when auto_promote is on); "
    f"{GATE_REFUSED} the gate refused it; {GATE_HELD} it passed but drift holds it back "
    "(drift.block_promotion); 1 an error (no such version, registry unreachable); "
    "2 bad params or usage."
)
def gate(
    version: Annotated[str, typer.Argument(help="Model version to put through the gate.")],
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = None,
) -> None:
    """Make a version the challenger and run the promotion gate (promotes when it passes and auto_promote is on)."""
    from cxr.registry.gate import gate as step

    s, r, client = _registry(params, root)
    res = _run(step, s, s.paths(r), client, version)
    for line in res.lines():
        typer.echo(line)
    if not res.decision.promote:
        raise typer.Exit(GATE_REFUSED)
    if res.held:
        raise typer.Exit(GATE_HELD)


@app.command(
    epilog=f"Exit codes: 0 checked, no drift (or nothing to compare with, said why); {DRIFT_FLAGGED} "
    "drift flagged; 1 an error (tracking server unreachable, no split manifest); 2 bad params."
)
def drift(params: ParamsOpt = Path("params.yaml"), root: RootOpt = None) -> None:
    """Compare the current split's data with the champion's; write the report, log it to MLflow, notify on drift."""
    from cxr.monitoring.drift import drift as step

    s, r, client = _registry(params, root)
    report = _run(step, s, s.paths(r), client.tracking_uri)
    typer.echo(report.summary())
    if report.flagged:
        raise typer.Exit(DRIFT_FLAGGED)


@app.command(
    epilog="Exit codes: 0 promoted (or already champion); 1 refused or an error (a version the gate "
    "refused needs --force; another data source; no such version); 2 bad params or usage."
)
def promote(
    version: Annotated[str, typer.Argument(help="Model version to make champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded on the version).")],
    force: Annotated[
        bool, typer.Option("--force", help="Promote a version the gate refused (recorded as forced).")
    ] = False,
    actor: ActorOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = None,
) -> None:
    """Manual promotion to champion, recorded with who, when and why."""
    from cxr.registry.aliases import default_actor
    from cxr.registry.promote import promote as step

    s, r, client = _registry(params, root)
    res = _run(step, client, s.base.model_name, version, reason, actor or default_actor(r), force=force)
    forced = " (forced past the gate's refusal)" if force and res.changed else ""
    typer.echo(f"{s.base.model_name}: champion is version {res.version} (was {res.previous}){forced}")


@app.command()
def rollback(
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")],
    actor: ActorOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = None,
) -> None:
    """Move champion back to the previous champion, recorded with who, when and why."""
    from cxr.registry.aliases import default_actor
    from cxr.registry.promote import rollback as step

    s, r, client = _registry(params, root)
    res = _run(step, client, s.base.model_name, reason, actor or default_actor(r))
    typer.echo(f"{s.base.model_name}: champion is version {res.version} again (was {res.previous})")


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output table: .csv or .json.")] = Path("predictions.csv"),
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="MLflow model URI (default models:/<base.model_name>@champion).")
    ] = None,
    gradcam: Annotated[Path | None, typer.Option("--gradcam", help="Folder for Grad-CAM overlays.")] = None,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = None,
) -> None:
    """Classify image files with a registered model (the champion by default).

    A file that cannot be read gets a row with its error (and a warning in the log); the rest are classified.
    Exit codes: 0 the table is written, 1 nothing could be done (no model or alias, the tracking server down,
    no readable image, a bad output name), 2 bad params.
    """
    from cxr.ops.tracking import tracking_uri
    from cxr.serving.predict import check_output
    from cxr.serving.predict import predict as step

    _run(check_output, out)  # a wrong suffix is refused before the model loads
    s, r = setup(params, root)
    res = _run(step, model or f"models:/{s.base.model_name}@champion", inputs, out, gradcam, tracking_uri(r))
    unreadable = f"; {len(res.failed)} unreadable, see the error column" if res.failed else ""
    typer.echo(f"predictions in {res.out}: {res.predicted} images classified{unreadable}")
    if res.warning:
        typer.echo(f"warning: {res.warning}", err=True)


@app.command()
def sweep(
    set_params: Annotated[
        list[str] | None,
        typer.Option(
            "--set-param", "-S", help="As in dvc exp run: key=value, or key=v1,v2 for a grid (repeat for more keys)."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The sweep's MLflow parent run (default: a timestamp).")
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Queue workers; 1 is the reliable choice.")] = 1,
    log_only: Annotated[
        bool, typer.Option("--log-only", help="Queue and run nothing: log the experiments DVC already has to MLflow.")
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = None,
) -> None:
    """Queue a DVC experiment grid, run it, and log every experiment to MLflow under one parent run."""
    import time

    from cxr.experiments.sweeps import log_sweep, queue, run_queue
    from cxr.ops.tracking import tracking_uri

    s, r = setup(params, root)
    names: list[str] | None = None
    status: dict[str, str] = {}
    if not log_only:
        if not set_params:
            typer.echo("error: give the grid with -S key=v1,v2 (or --log-only)", err=True)
            raise typer.Exit(2)
        names = _run(queue, r, set_params)
        typer.echo(f"queued {len(names)} experiments: {', '.join(names)}")
        status = _run(run_queue, r, names, jobs)
        typer.echo("finished: " + ", ".join(f"{n} {st}" for n, st in status.items()))
        names = [n for n, st in status.items() if st == "Success"]
    sweep_name = name or time.strftime("sweep-%Y%m%d-%H%M%S")
    parent, logged = _run(log_sweep, r, s, tracking_uri(r), sweep_name, names)
    typer.echo(f"MLflow: {len(logged)} runs logged under {sweep_name} (run {parent}); compare with `cxr exp-show`")
    if names is not None and len(names) < len(status):
        typer.echo("error: some experiments failed; see `dvc queue logs NAME`", err=True)
        raise typer.Exit(1)


@app.command("exp-show")
def exp_show(
    md: Annotated[bool, typer.Option("--md", help="A Markdown table.")] = False,
    root: RootOpt = None,
) -> None:
    """`dvc exp show` cut to the headline metrics and the params that differ between experiments."""
    from cxr.experiments.sweeps import show_args
    from cxr.ops.dvc import run_dvc

    typer.echo(_run(run_dvc, show_args(md), (root or Path(".")).resolve()), nl=False)


@app.command()
def tune(
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = None,
    trials: Annotated[int | None, typer.Option("--trials", "-n", help="Trials (default tune.trials).")] = None,
    queue: Annotated[bool, typer.Option("--queue", help="Also queue the best values as a DVC experiment.")] = False,
) -> None:
    """Search tune.space on the validation split (Optuna, tracked in MLflow); write the best params file."""
    from cxr.experiments.tune import tune as step
    from cxr.ops.dvc import run_dvc
    from cxr.ops.tracking import tracking_uri

    s, r = setup(params, root)
    res = _run(step, s, s.paths(r), tracking_uri(r), trials)
    typer.echo(
        f"study {res.study_name}: best {s.tune.objective}={res.best_value:.4f} after {res.trials} trials "
        f"({res.pruned} pruned)"
    )
    typer.echo(f"best params in {res.params_file}; apply with: dvc exp run {shlex.join(res.dvc_args())}")
    if queue:
        _run(run_dvc, ["exp", "run", "--queue", *res.dvc_args()], r)
        typer.echo("queued as a DVC experiment: dvc queue start -j 1")


@app.command()
def run(params: ParamsOpt = Path("params.yaml"), root: RootOpt = None) -> None:
    """The whole pipeline as a Prefect flow: download, the DVC stages, register."""
    s, r = setup(params, root)
    from flows.pipeline import pipeline

    res = _run(pipeline, str(params.resolve()), str(r))
    typer.echo(f"pipeline done: {res}")


if __name__ == "__main__":  # pragma: no cover
    app()
