"""One self-contained HTML evaluation report (inline CSS, images as data URIs) and a Markdown summary.

The page needs nothing outside itself, so it can be attached to an MLflow run, mailed, or opened offline:
no scripts, no fonts, no external stylesheets or images. The markup is in ``cxr/reporting/templates/report*.html.j2``,
rendered with autoescaping, so every piece of text from files or params is escaped.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from markupsafe import Markup

from cxr.core.config import Settings
from cxr.core.io import read_csv, write_text
from cxr.core.paths import ResolvedPaths
from cxr.reporting.templating import render_html

if TYPE_CHECKING:
    import matplotlib.figure

log = logging.getLogger(__name__)


#: Known evaluation figures, in reading order, with captions; other PNGs in the folder follow, by name.
EVAL_FIGURES: tuple[tuple[str, str], ...] = (
    ("confusion_matrix.png", "Confusion matrix (test): counts and row-normalised"),
    ("roc.png", "ROC curves, one-vs-rest (test)"),
    ("precision_recall.png", "Precision-recall curves, one-vs-rest (test)"),
    ("reliability.png", "Reliability diagram (test), at the temperature the served model applies"),
)


OVERALL_KEYS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Accuracy"),
    ("macro_precision", "Macro precision"),
    ("macro_sensitivity", "Macro sensitivity"),
    ("macro_specificity", "Macro specificity"),
    ("macro_f1", "Macro F1"),
    ("weighted_f1", "Weighted F1"),
    ("macro_auc", "Macro AUC (one-vs-rest)"),
)


PER_CLASS_KEYS = ("precision", "sensitivity", "specificity", "f1", "auc")


BINARY_KEYS = ("sensitivity", "specificity", "ppv", "npv", "auc")


_CAM_PER_CLASS = {
    "lung_energy_per_class": "CAM energy in the lungs",
    "pointing_game_per_class": "pointing game",
    "pointing_game_chance_per_class": "pointing game by chance",
}


@dataclass(frozen=True)
class Figure:
    """An image to inline in the page as a base64 data URI, with its caption."""

    caption: str
    data: str
    mime: str = "image/png"


def _img(path: Path, caption: str) -> Figure:
    """A figure from a PNG (or JPEG) file."""
    return _img_bytes(path.read_bytes(), caption, "image/png" if path.suffix.lower() == ".png" else "image/jpeg")


def _img_bytes(raw: bytes, caption: str, mime: str = "image/png") -> Figure:
    """A figure from encoded image bytes."""
    return Figure(caption, base64.b64encode(raw).decode("ascii"), mime)


def _read_json(path: Path, required: bool = False) -> dict | None:
    """A JSON object from ``path``; None when absent (unless required); errors name the file."""
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path}: not found; run the evaluate step first")
        log.warning("%s: not found; its section of the report is left out", path)
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _metrics_section(m: Mapping[str, Any]) -> Markup:
    """Overall, per-class, binary and calibration tables."""
    boot = m.get("bootstrap") or {}
    return render_html(
        "report_metrics.html.j2",
        m=m,
        boot=boot,
        ci_pct=round(100 * float(boot.get("ci", 0.95))),
        overall_keys=OVERALL_KEYS,
        per_class=m.get("per_class") or {},
        per_class_keys=PER_CLASS_KEYS,
        binary=m.get("binary"),
        binary_keys=BINARY_KEYS,
        cal=m.get("calibration"),
    )


def _source_section(m: Mapping[str, Any]) -> Markup:
    """Accuracy and per-class sensitivity by image source: the shortcut audit."""
    by_source = m.get("per_source") or {}
    classes = list(next(iter(by_source.values())).get("per_class", {})) if by_source else []
    return render_html(
        "report_sources.html.j2",
        by_source=by_source,
        classes=classes,
        sensitivity_header=[f"sensitivity {c}" for c in classes],
    )


def _figures_section(folder: Path) -> Markup:
    """Every PNG in the evaluation folder, known ones first."""
    figures = None
    if folder.is_dir():
        known = dict(EVAL_FIGURES)
        present = sorted(p.name for p in folder.glob("*.png"))
        order = [name for name, _ in EVAL_FIGURES if name in present] + [n for n in present if n not in known]
        figures = [_img(folder / name, known.get(name, Path(name).stem.replace("_", " "))) for name in order]
    return render_html("report_figures.html.j2", figures=figures)


def _gradcam_section(folder: Path, cam_file: Path, classes: Iterable[str]) -> Markup:
    """Grad-CAM metrics (lung energy, pointing game vs chance) and the per-class galleries."""
    cam = _read_json(cam_file)
    if cam is None:
        return render_html("report_gradcam.html.j2", cam=None)
    chance, hit = cam.get("pointing_game_chance"), cam.get("pointing_game")
    per_class_keys = [k for k in _CAM_PER_CLASS if cam.get(k)]
    galleries = {p.name: p for p in folder.glob("gallery-*.png")}
    ordered = [f"gallery-{c.replace(' ', '_')}.png" for c in classes]
    ordered = [n for n in ordered if n in galleries] + sorted(n for n in galleries if n not in ordered)
    return render_html(
        "report_gradcam.html.j2",
        cam=cam,
        pointing_ratio=f"{hit / chance:.1f}x chance" if hit is not None and chance else "n/a",
        per_class_keys=per_class_keys,
        per_class_labels=[_CAM_PER_CLASS[k] for k in per_class_keys],
        per_class_names=list(dict.fromkeys(n for k in per_class_keys for n in cam[k])),
        galleries=[
            _img(galleries[n], n.removeprefix("gallery-").removesuffix(".png").replace("_", " ")) for n in ordered
        ],
    )


def _data_section(paths: ResolvedPaths) -> Markup:
    """The data version and the split's data report."""
    from cxr.ops.lineage import data_version

    rep = _read_json(paths.data_report)
    splits = ["train", "valid", "test"]
    counts = (rep or {}).get("counts") or {}
    sources = (rep or {}).get("sources") or {}
    return render_html(
        "report_data.html.j2",
        data_version=data_version(paths.root),
        rep=rep,
        splits=splits,
        count_rows=[(c, [*(v.get(s, 0) for s in splits), sum(v.get(s, 0) for s in splits)]) for c, v in counts.items()],
        split_totals=[sum(v.get(s, 0) for v in counts.values()) for s in splits],
        source_names=sorted({s for v in sources.values() for s in v}),
    )


def _probes_section(m: Mapping[str, Any]) -> Markup:
    """The shortcut probes: accuracy after re-encoding the test images, and with the lungs or their outside blanked."""
    probes = m.get("probes") or {}
    lungs = probes.get("lungs") or {}
    return render_html(
        "report_probes.html.j2", probes=probes, lung_threshold_pct=100 * float(lungs.get("threshold", 0))
    )


def _training_section(paths: ResolvedPaths) -> Markup:
    """The per-epoch curves from the train step's history, and the selected epoch."""
    import io

    history_path = paths.history
    if not history_path.is_file():
        log.warning("%s: not found; the training curves are left out", history_path)
        return render_html("report_training.html.j2", curves=None)
    history = read_csv(history_path)
    summary = _read_json(paths.train_metrics) or {}
    fig = plot_training_curves(history, summary.get("epoch"))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    preview = (
        _img(
            paths.augmentation_preview,
            "Train augmentations on one training image: the CPU path (top) and "
            "the device path (bottom), the same seeds",
        )
        if paths.augmentation_preview.is_file()
        else None
    )
    return render_html(
        "report_training.html.j2",
        curves=_img_bytes(buf.getvalue(), "Loss and validation scores per epoch"),
        summary=summary,
        epochs=len(history),
        preview=preview,
    )


def _lineage_section(settings: Settings, paths: ResolvedPaths, registered: Mapping[str, str] | None) -> Markup:
    """Which code, data and params made this page, and the MLflow run and registered version it belongs to."""
    from cxr.ops.lineage import data_version, file_hash, git_commit

    commit, dirty = git_commit(paths.root)
    return render_html(
        "report_lineage.html.j2",
        commit=commit,
        dirty=dirty,
        data_version=data_version(paths.root),
        lock_hash=file_hash(paths.root / "dvc.lock"),
        fingerprint=settings.fingerprint(),
        registered=registered,
    )


def _params_section(settings: Settings) -> Markup:
    """Every parameter as one row per key, section by section; those that differ from the defaults marked, and
    listed first."""
    from cxr.ops.lineage import flatten

    def text(v: Any) -> str:
        return json.dumps(v) if isinstance(v, (list, dict)) or v is None else str(v)

    defaults = flatten(Settings().model_dump(mode="json"))
    sections, changed = [], []
    for name, block in settings.model_dump(mode="json").items():
        items = flatten(block, f"{name}.") if isinstance(block, dict) else {name: block}
        rows = []
        for key, value in items.items():
            default = defaults.get(key)
            rows.append((key, text(value), None if value == default else text(default)))
            if value != default:
                changed.append(rows[-1])
        sections.append((name, rows))
    return render_html("report_params.html.j2", sections=sections, changed=changed)


def report(
    settings: Settings,
    paths: ResolvedPaths,
    out: Path | None = None,
    registered: Mapping[str, str] | None = None,
    extra_sections: Sequence[tuple[str, str, str]] = (),
) -> Path:
    """Write the self-contained HTML report (default ``base.paths.report``); return its path.

    ``registered`` (``run_id``, ``name``, ``version``) is known only after registration: the copy logged
    to MLflow carries it, the page the report stage writes says the model is not registered yet.
    ``extra_sections`` (id, title, HTML) come from outside the DVC graph (the flow's drift check) and
    go into that registered copy only, so the stage's page depends on nothing ``dvc.yaml`` does not list.
    """
    out = Path(out) if out is not None else paths.report
    metrics = _read_json(paths.metrics_full, required=True) or {}
    sections = [
        ("lineage", "Lineage", _lineage_section(settings, paths, registered)),
        ("metrics", "Test metrics", _metrics_section(metrics)),
        ("sources", "By image source", _source_section(metrics)),
        ("probes", "Shortcut probes", _probes_section(metrics)),
        ("figures", "Evaluation figures", _figures_section(paths.eval_reports)),
        (
            "gradcam",
            "Grad-CAM: where the model looks",
            _gradcam_section(paths.gradcam_reports, paths.cam_metrics_full, settings.base.labels),
        ),
        ("training", "Training", _training_section(paths)),
        ("data", "Data", _data_section(paths)),
        ("params", "Parameters", _params_section(settings)),
    ]
    # Extra sections are HTML by contract (rendered from the templates by their makers).
    sections[-1:-1] = [(sid, title, Markup(html)) for sid, title, html in extra_sections] or [
        # What the drift check is: its result is known to the flow only, after this stage.
        ("drift", "Data drift", render_html("report_drift.html.j2", drift=None)),
    ]
    page = render_html(
        "report.html.j2",
        title=f"{settings.base.model_name}: evaluation report",
        labels=list(settings.base.labels),
        arch=settings.train.arch,
        image_size=settings.train.image_size,
        fingerprint=settings.fingerprint(),
        synthetic=settings.download.source == "synthetic",
        sections=[{"id": sid, "title": title, "html": html} for sid, title, html in sections],
    )
    write_text(out, page)
    log.info("report written to %s (%.0f kB)", out, out.stat().st_size / 1024)
    return out


def plot_training_curves(history: Sequence[dict], best_epoch: int | None = None) -> matplotlib.figure.Figure:
    """Loss (train, validation) and validation accuracy / macro F1 per epoch, the selected epoch marked."""
    from matplotlib.figure import Figure

    def series(key: str) -> np.ndarray:
        return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in history])

    epochs = series("epoch")
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    loss_ax, score_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, series("train_loss"), "o-", label="train loss")
    loss_ax.plot(epochs, series("val_loss"), "o-", label="validation loss")
    loss_ax.set_xlabel("Epoch")
    loss_ax.set_ylabel("Cross-entropy")
    score_ax.plot(epochs, series("val_accuracy"), "o-", label="validation accuracy")
    score_ax.plot(epochs, series("val_macro_f1"), "o-", label="validation macro F1")
    score_ax.set_xlabel("Epoch")
    score_ax.set_ylim(0.0, 1.0)
    for ax in (loss_ax, score_ax):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1.0, label=f"selected (epoch {best_epoch})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig
