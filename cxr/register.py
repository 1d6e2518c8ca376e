"""The register step: one MLflow run per pipeline run (params, lineage, metrics, figures, the servable model,
a model card) and a new registered version carrying the lineage, the test metrics and the card."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.config import ResolvedPaths, Settings
from cxr.dvcops import data_version, file_hash

log = logging.getLogger(__name__)


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached."""


@dataclass(frozen=True)
class RegisterResult:
    """The MLflow run and the registered model version."""

    run_id: str
    model_name: str
    version: str
    tracking_uri: str


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the sqlite store in the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Fail within seconds when a remote tracking server does not answer (before any training)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
            if resp.status >= 400:
                raise TrackingUnavailable(f"MLflow tracking server {uri} answered {resp.status} on /health")
    except (urllib.error.URLError, OSError) as err:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)}); "
            "start it or unset MLFLOW_TRACKING_URI to use the local sqlite store"
        ) from None


def git_commit(root: Path) -> tuple[str, bool]:
    """The checked-out commit and whether the work tree has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown", False


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """Nested mapping to dotted keys."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _experiment(mlflow, name: str, root: Path) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (root / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


#: Test metrics copied onto every registered version (point estimate and interval).
HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "macro_auc")


def _fmt(value: Any, digits: int = 4) -> str:
    """A metric for a tag or the card: rounded, or 'n/a' when missing."""
    if isinstance(value, bool) or value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def _with_ci(block: dict, key: str) -> str:
    """'0.9123 (95% CI 0.88-0.94)' from a metrics block with ``key``, ``key_ci_low``, ``key_ci_high``."""
    if block.get(key) is None:
        return "n/a"
    low, high = block.get(f"{key}_ci_low"), block.get(f"{key}_ci_high")
    if low is None or high is None:
        return _fmt(block[key])
    return f"{_fmt(block[key])} [{_fmt(low)}, {_fmt(high)}]"


def metric_tags(metrics: dict, positive: str | None) -> dict[str, str]:
    """Headline test metrics with their intervals as version tags (``test.accuracy``, ``test.accuracy_ci_low``, ...)."""
    tags: dict[str, str] = {}

    def put(prefix: str, block: dict, key: str) -> None:
        for suffix in ("", "_ci_low", "_ci_high"):
            value = block.get(f"{key}{suffix}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tags[f"{prefix}{key}{suffix}"] = f"{value:.6g}"

    for key in HEADLINE_METRICS:
        put("test.", metrics, key)
    if positive is not None:
        per_class = metrics.get("per_class", {}).get(positive)
        if per_class:
            # Sensitivity of the argmax decision, and at the threshold chosen on validation (the binary block).
            put(f"test.{positive}.", per_class, "sensitivity")
        binary = metrics.get("binary") or {}
        if binary.get("positive") == positive:
            put(f"test.{positive}.at_threshold.", binary, "sensitivity")
            if isinstance(binary.get("threshold"), (int, float)):
                tags[f"test.{positive}.threshold"] = f"{binary['threshold']:.6g}"
    if "n" in metrics:
        tags["test.n"] = str(metrics["n"])
    probes = metrics.get("probes") or {}
    for name in ("format", "lungs"):
        if name in probes:
            tags[f"probe.{name}.shortcut"] = str(bool(probes[name].get("shortcut"))).lower()
    if probes.get("summary"):
        tags["probe.summary"] = str(probes["summary"])[:500]
    return tags


def _data_source(settings: Settings) -> str:
    """Where the raw data came from, in words."""
    d = settings.download
    if d.source == "synthetic":
        return (f"synthetic images generated by cxr.synthetic in the Kaggle v5 layout "
                f"({d.synthetic.per_class} per class, {d.synthetic.size} px); not real radiographs")
    if d.source == "kaggle":
        return f"Kaggle COVID-19 Radiography Database `{d.kaggle.handle}`, version {d.kaggle.version}"
    return f"a local copy of the COVID-19 Radiography Database ({d.local.path})"


def model_card(settings: Settings, meta: dict, metrics: dict, cam: dict, lineage: dict[str, str],
               data_report: dict | None = None) -> str:
    """The model card (Markdown): use, data, classes, training, test metrics with CIs, calibration, CAMs, limits."""
    classes = list(meta["classes"])
    t = settings.train
    pos = settings.evaluate.positive_class
    ci = (metrics.get("bootstrap") or {}).get("ci", settings.evaluate.ci)
    pct = f"{ci * 100:.0f}%"
    lines = [
        f"# Model card: {settings.base.model_name}",
        "",
        "## Intended use",
        "",
        f"Research and teaching: a {len(classes)}-class classifier of frontal chest X-rays "
        f"({', '.join(classes)}), to study an MLOps workflow (versioned data, tracked training, "
        "calibrated and explained predictions). It is **not** a medical device and must not be used for "
        "diagnosis, triage or any clinical decision.",
        "",
        "## Data",
        "",
        f"- Source: {_data_source(settings)}",
        f"- Data version (`data.dvc` md5): `{lineage.get('data_version', 'unknown')}`",
        f"- Git commit: `{lineage.get('git_commit', 'unknown')}`"
        + (" (uncommitted changes)" if lineage.get("git_dirty") == "true" else ""),
        f"- `dvc.lock` sha256: `{lineage.get('dvc_lock_sha256', 'none')}`; params hash: `{lineage.get('params_hash')}`",
        f"- Split: seeded ({settings.base.seed}), {settings.split.mode}, {settings.split.valid} validation / "
        f"{settings.split.test} test images, near-duplicate groups (<= {settings.split.near_duplicate_bits} "
        "bits of a 256-bit difference hash) kept within one split",
    ]
    if data_report:
        dup = data_report.get("duplicates") or {}
        lines.append(f"- Images: {data_report.get('images', 'n/a')}; near-duplicate groups: {dup.get('groups', 'n/a')} "
                     f"({dup.get('images_in_groups', 'n/a')} images), exact copies: {dup.get('exact_copies', 'n/a')}, "
                     f"groups with conflicting labels: {len(dup.get('label_conflicts') or [])}")
    lines += [
        "",
        "## Classes",
        "",
        "Output columns, in this order: " + ", ".join(f"`p_{c}`" for c in classes) + ", then `label`.",
    ]
    if isinstance(settings.base.classes, dict):
        lines += [f"- {label}: dataset folders {', '.join(folders)}" for label, folders in settings.base.classes.items()]
    lines += [
        "",
        "## Training",
        "",
        f"- Architecture: {meta.get('arch')} (one gray input channel), input {meta.get('image_size')} x "
        f"{meta.get('image_size')} px; weights: {t.weights or 'from scratch'}",
        f"- {t.epochs} epochs, batch {t.batch_size}, AdamW lr {t.lr} (warm-up {t.warmup_epochs} epochs, cosine), "
        f"weight decay {t.weight_decay}, label smoothing {t.label_smoothing}, class balance: {t.class_balance}",
        f"- Best epoch selected on validation by {t.monitor}: epoch {int(meta.get('epoch', -1)) + 1}"
        + (f" ({', '.join(f'{k} {_fmt(v)}' for k, v in (meta.get('val') or {}).items())})" if meta.get("val") else ""),
        "",
        f"## Test metrics ({metrics.get('n', 'n/a')} images, {pct} bootstrap intervals)",
        "",
        "| metric | value [CI] |",
        "| --- | --- |",
    ]
    for key in ("accuracy", "macro_auc", "macro_f1", "macro_sensitivity", "macro_specificity"):
        if key in metrics:
            lines.append(f"| {key} | {_with_ci(metrics, key)} |")
    per_class = metrics.get("per_class") or {}
    if per_class:
        lines += ["", "| class | support | sensitivity | specificity | AUC |", "| --- | --- | --- | --- | --- |"]
        for c, block in per_class.items():
            lines.append(f"| {c} | {block.get('support', 'n/a')} | {_with_ci(block, 'sensitivity')} | "
                         f"{_with_ci(block, 'specificity')} | {_with_ci(block, 'auc')} |")
    binary = metrics.get("binary") or {}
    if binary:
        lines += ["", f"{binary.get('positive', pos)} vs rest at threshold {_fmt(binary.get('threshold'))} "
                  f"(chosen on validation): sensitivity {_with_ci(binary, 'sensitivity')}, "
                  f"specificity {_with_ci(binary, 'specificity')}, AUC {_with_ci(binary, 'auc')}."]
    cal = metrics.get("calibration") or {}
    lines += ["", "## Calibration", ""]
    if cal:
        lines.append(f"Temperature scaling fitted on validation: T = {_fmt(cal.get('temperature'))}; test ECE "
                     f"{_fmt(cal.get('ece_uncalibrated'))} before, {_fmt(cal.get('ece'))} after; Brier "
                     f"{_fmt(cal.get('brier'))}. The served model applies this temperature.")
    else:
        lines.append("No calibration recorded: the served probabilities are the raw softmax.")
    probes = metrics.get("probes") or {}
    if probes:
        lines += ["", "## Shortcut probes", "", str(probes.get("summary", ""))]
        fmt = probes.get("format") or {}
        if fmt:
            lines.append(f"- Test images re-encoded in the other format: accuracy {_fmt(fmt.get('accuracy'))} "
                         f"against {_fmt(fmt.get('accuracy_original'))} as stored")
        lungs = probes.get("lungs") or {}
        if lungs:
            lines.append(f"- Outside the lungs blanked: accuracy {_fmt(lungs.get('accuracy_lungs_only'))}; lungs "
                         f"blanked: {_fmt(lungs.get('accuracy_lungs_blanked'))} (chance {_fmt(lungs.get('chance'))})")
    lines += ["", "## Grad-CAM", ""]
    if cam:
        if "lung_energy" in cam:
            lines.append(f"- Share of CAM energy inside the lungs: {_fmt(cam.get('lung_energy'))} "
                         f"(the lungs cover {_fmt(cam.get('lung_area_fraction'))} of the image)")
        if "pointing_game" in cam:
            lines.append(f"- Pointing game against the known lesions: {_fmt(cam.get('pointing_game'))} "
                         f"(chance {_fmt(cam.get('pointing_game_chance'))}); lesion IoU {_fmt(cam.get('lesion_iou'))}")
        if not {"lung_energy", "pointing_game"} & set(cam):
            lines.append(f"- {cam.get('images', 'n/a')} test images explained ({cam.get('method', 'n/a')}); no masks to score against")
    else:
        lines.append("No Grad-CAM metrics were produced for this model.")
    lines += [
        "",
        "## Known limitations",
        "",
        "- **Source-archive shortcut.** In the COVID-19 Radiography Database each class was collected from "
        "different archives and hospitals. A model can separate the classes by source (scanner, text markers, "
        "borders, contrast, resolution) instead of by pathology; high test scores do not show that it looks at "
        "the lungs. Check the Grad-CAM lung-energy share above, and expect lower accuracy on data from new sites.",
        "- **Near duplicates.** The archives hold repeated and lightly edited images. Near duplicates are grouped "
        "by a perceptual hash and never split across train/valid/test, but duplicates beyond the hash threshold "
        "(crops, rotations, re-exports) can still leak and inflate test metrics.",
        "- **No patient identifiers.** The dataset has none, so images of the same patient can fall into "
        "different splits: the test set is not patient-independent and its metrics are optimistic.",
        f"- **Small test set.** {metrics.get('n', 'n/a')} test images: read the intervals, not the point estimates.",
        "- Class proportions follow the dataset, not any clinical population; predictive values do not transfer.",
    ]
    if settings.download.source == "synthetic":
        lines.append("- **Synthetic data.** This version was trained and tested on generated images; "
                     "its metrics say nothing about real radiographs.")
    return "\n".join(lines) + "\n"


#: MLflow's registry stores a version description in a 5000-character column.
DESCRIPTION_LIMIT = 5000


def version_description(card: str, run_id: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """The model card as a version description, cut at a line and pointing to the full artifact when too long."""
    if len(card) <= limit:
        return card
    note = f"\n\n(cut; the full card is the artifact model_card.md of run {run_id})\n"
    cut = card[: limit - len(note)]
    return cut[: cut.rfind("\n") if "\n" in cut else len(cut)] + note


def _load_json(path: Path) -> dict:
    """A JSON file as a mapping; empty when absent."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _create_version(client, name: str, source: str, run_id: str, model_id: str | None,
                    tags: dict[str, str], description: str):
    """Create the version in one call; a registered model made just for it is removed again when that fails."""
    from mlflow.exceptions import MlflowException

    created = False
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(name, description=f"Chest X-ray classifier ({name}); see each version's model card.")
            created = True
        except MlflowException as err2:
            if err2.error_code != "RESOURCE_ALREADY_EXISTS":  # another registration created it meanwhile
                raise
    try:
        return client.create_model_version(name, source, run_id=run_id, tags=tags, description=description,
                                           model_id=model_id)
    except Exception:
        # Only an empty model made here is removed: another process may have registered a version meanwhile.
        if created and not client.search_model_versions(f"name='{name}'"):
            client.delete_registered_model(name)
        raise


def register(settings: Settings, paths: ResolvedPaths) -> RegisterResult:
    """Log the pipeline's outputs to one MLflow run and register the servable model as a new version."""
    import mlflow

    from cxr.metrics import flat_metrics
    from cxr.serving import log_pyfunc
    from cxr.train import load_checkpoint

    root = paths.root
    uri = tracking_uri(root)
    check_tracking(uri)
    # Everything the version needs is read before MLflow is touched: bad inputs change nothing there.
    try:
        metrics = json.loads(paths.metrics.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{paths.metrics}: test metrics not found; run the evaluate step first") from None
    calibration = paths.eval_reports / "calibration.json"
    if not calibration.is_file():
        raise FileNotFoundError(f"{calibration}: calibration not found; run the evaluate step first")
    if not paths.best_checkpoint.is_file():
        raise FileNotFoundError(f"{paths.best_checkpoint}: checkpoint not found; run the train step first")
    cam = _load_json(paths.gradcam_reports / "metrics.json")
    commit, dirty = git_commit(root)
    lineage = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "data_version": data_version(root) or "unknown",
        "dvc_lock_sha256": file_hash(root / "dvc.lock") or "none",
        "params_hash": settings.fingerprint(),
        "data_source": settings.download.source,
    }
    meta = {k: v for k, v in load_checkpoint(paths.best_checkpoint).items() if k != "model"}
    card = model_card(settings, meta, metrics, cam, lineage, _load_json(paths.data_report))

    mlflow.set_tracking_uri(uri)
    exp_id = _experiment(mlflow, settings.base.experiment, root)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"pipeline-{commit[:8]}") as run:
        run_id = run.info.run_id
        mlflow.set_tags(lineage)
        mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                           for k, v in flatten(settings.model_dump(mode="json")).items()})
        history = paths.train_reports / "history.csv"
        if history.is_file():
            with history.open() as fh:
                for row in csv.DictReader(fh):
                    step = int(row.pop("epoch"))
                    mlflow.log_metrics({f"epoch/{k}": float(v) for k, v in row.items() if v != ""}, step=step)
        mlflow.log_metrics(flat_metrics(metrics, "test/"))
        mlflow.log_metrics({f"cam/{k}": float(v) for k, v in flatten(cam).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlflow.log_artifacts(str(paths.eval_reports), "evaluation")
        if paths.gradcam_reports.is_dir():
            mlflow.log_artifacts(str(paths.gradcam_reports), "gradcam")
        # The manifest lets the promotion gate (cxr.promote) map predictions to image hashes later.
        for extra in (paths.report, paths.data_report, paths.manifest, paths.train_reports / "history.csv", root / "params.yaml",
                      root / "dvc.lock"):
            if extra.is_file():
                mlflow.log_artifact(str(extra), "pipeline")
        mlflow.log_text(card, "model_card.md")
        info = log_pyfunc(paths.best_checkpoint, calibration, name="model", batch_size=settings.evaluate.batch_size)
    # The version is created only once the run has finished with every artifact in place.
    tags = {**lineage, "mlflow_run_id": run_id, **metric_tags(metrics, settings.evaluate.positive_class)}
    client = mlflow.MlflowClient()
    mv = _create_version(client, settings.base.model_name, info.model_uri, run_id, info.model_id, tags,
                         version_description(card, run_id))
    log.info("MLflow run %s; registered %s version %s", run_id, settings.base.model_name, mv.version)
    return RegisterResult(run_id, settings.base.model_name, str(mv.version), uri)
