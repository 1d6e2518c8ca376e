"""One self-contained HTML evaluation report (inline CSS, images as data URIs) and a Markdown summary.

The page needs nothing outside itself, so it can be attached to an MLflow run, mailed, or opened offline:
no scripts, no fonts, no external stylesheets or images. Every piece of text from files or params is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxr.config import ResolvedPaths, Settings

log = logging.getLogger(__name__)

#: Where the report goes when no path is given, relative to the project root.

#: Known evaluation figures, in reading order, with captions; other PNGs in the folder follow, by name.
EVAL_FIGURES: tuple[tuple[str, str], ...] = (
    ("confusion_matrix.png", "Confusion matrix (test): counts and row-normalised"),
    ("roc.png", "ROC curves, one-vs-rest (test)"),
    ("precision_recall.png", "Precision-recall curves, one-vs-rest (test)"),
    ("reliability.png", "Reliability diagram (test), at the temperature the served model applies"),
)

_OVERALL_KEYS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Accuracy"),
    ("macro_precision", "Macro precision"),
    ("macro_sensitivity", "Macro sensitivity"),
    ("macro_specificity", "Macro specificity"),
    ("macro_f1", "Macro F1"),
    ("weighted_f1", "Weighted F1"),
    ("macro_auc", "Macro AUC (one-vs-rest)"),
)
_PER_CLASS_KEYS = ("precision", "sensitivity", "specificity", "f1", "auc")
_BINARY_KEYS = ("sensitivity", "specificity", "ppv", "npv", "auc")
_CAM_PER_CLASS = {
    "lung_energy_per_class": "CAM energy in the lungs",
    "pointing_game_per_class": "pointing game",
    "pointing_game_chance_per_class": "pointing game by chance",
}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1.5rem;color:#1d2330;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #d8dde6;padding-bottom:.2rem;margin-top:2.2rem}
h3{margin-top:1.4rem}.muted{color:#5b6475;font-size:.9rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #d8dde6;padding:.3rem .6rem;text-align:right}th{background:#f1f4f8}
td:first-child,th:first-child{text-align:left}
.ci{color:#5b6475;font-size:.8rem}figure{margin:1rem 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #d8dde6}figcaption{font-size:.85rem;color:#5b6475}
pre{background:#f6f8fa;border:1px solid #d8dde6;padding:.8rem;overflow-x:auto;font-size:.8rem}
.warn{background:#fff6e0;border-left:4px solid #e0a800;padding:.4rem .8rem}
nav a{margin-right:.8rem}
"""


def _e(value: Any) -> str:
    """Escaped text of any value."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell ('n/a' when undefined), escaped."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return _e(value)
    if isinstance(value, int):
        return _e(value)
    if isinstance(value, float):
        return _e(f"{value:.{digits}f}")
    return _e(value)


def _with_ci(block: Mapping[str, Any], key: str) -> str:
    """'0.912 [0.880, 0.940]' for ``key`` and its ``_ci_low``/``_ci_high`` siblings, as table-cell HTML."""
    point = _fmt(block.get(key))
    lo, hi = block.get(f"{key}_ci_low"), block.get(f"{key}_ci_high")
    if lo is None or hi is None:
        return point
    return f'{point} <span class="ci">[{_fmt(lo)}, {_fmt(hi)}]</span>'


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """An HTML table; header cells are escaped here, body cells must already be HTML."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, caption: str) -> str:
    """A figure with the PNG inlined as a base64 data URI."""
    return _img_bytes(path.read_bytes(), caption, "image/png" if path.suffix.lower() == ".png" else "image/jpeg")


def _img_bytes(raw: bytes, caption: str, mime: str = "image/png") -> str:
    """A figure with encoded image bytes inlined as a base64 data URI."""
    data = base64.b64encode(raw).decode("ascii")
    return (
        f'<figure><img src="data:{mime};base64,{data}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


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


# --------------------------------------------------------------------------- sections


def _metrics_section(m: Mapping[str, Any]) -> str:
    """Overall, per-class, binary and calibration tables."""
    boot = m.get("bootstrap") or {}
    ci = boot.get("ci", 0.95)
    parts = [
        f'<p class="muted">Test split, n = {_fmt(m.get("n"))}; {_fmt(round(100 * float(ci)))}% bootstrap '
        f'intervals in brackets ({_fmt(boot.get("n_boot"))} resamples'
        f'{", stratified by class" if boot.get("stratified") else ""}). '
        f'Validation accuracy: {_fmt(m.get("valid_accuracy"))}.</p>',
        "<h3>Overall</h3>",
        _table(["metric", "value [95% CI]"], [[_e(label), _with_ci(m, key)] for key, label in _OVERALL_KEYS if key in m]),
    ]
    per_class = m.get("per_class") or {}
    if per_class:
        rows = [
            [_e(name), _fmt(block.get("support")), *(_with_ci(block, k) for k in _PER_CLASS_KEYS)]
            for name, block in per_class.items()
        ]
        parts += ["<h3>Per class (one-vs-rest)</h3>", _table(["class", "support", *_PER_CLASS_KEYS], rows)]
    binary = m.get("binary")
    if binary:
        parts += [
            f"<h3>Binary: {_e(binary.get('positive'))} vs rest</h3>",
            f'<p class="muted">Threshold {_fmt(binary.get("threshold"))} on the {_e(binary.get("positive"))} '
            f"probability, chosen on validation; {_fmt(binary.get('n_positive'))} positives, "
            f"{_fmt(binary.get('n_negative'))} negatives.</p>",
            _table(["metric", "value [95% CI]"], [[_e(k), _with_ci(binary, k)] for k in _BINARY_KEYS]),
        ]
    cal = m.get("calibration")
    if cal:
        parts += ["<h3>Calibration</h3>", _calibration(cal)]
    return "\n".join(parts)


def _calibration(cal: Mapping[str, Any]) -> str:
    """The temperature: fitted, applied or not and by which rule, and what it does on held-out data."""
    fitted = cal.get("temperature_fitted", cal.get("temperature"))
    applied = cal.get("temperature_applied", True)
    rows = [
        ["temperature fitted on validation", _fmt(fitted)],
        ["temperature applied (served, and used for every test figure)", _fmt(cal.get("temperature"))],
    ]
    if "valid_cv_nll_scaled" in cal:
        rows += [["validation NLL, cross-validated: scaled / unscaled",
                  f"{_fmt(cal.get('valid_cv_nll_scaled'))} / {_fmt(cal.get('valid_cv_nll_unscaled'))}"]]
    rows += [
        ["test ECE, unscaled", _fmt(cal.get("ece_uncalibrated"))],
        ["test ECE at the fitted temperature", _fmt(cal.get("ece_at_fitted_temperature", cal.get("ece")))],
        ["test ECE as served", _fmt(cal.get("ece"))],
        ["test Brier score as served", _fmt(cal.get("brier"))],
    ]
    rule = cal.get("criterion")
    note = (f'<p class="muted">Rule: the fitted temperature is applied only when {_e(rule)}. '
            f'{"It did, so it is applied." if applied else "It did not, so the served probabilities are the raw softmax."}'
            "</p>" if rule else "")
    warn = ""
    if cal.get("fitted_worsens_test_ece"):
        warn = (f'<p class="warn">The temperature fitted on validation makes held-out (test) calibration worse: ECE '
                f'{_fmt(cal.get("ece_uncalibrated"))} unscaled, {_fmt(cal.get("ece_at_fitted_temperature"))} '
                f'scaled{"" if applied else " (it is not applied)"}.</p>')
    return note + warn + _table(["metric", "value"], rows)


def _source_section(m: Mapping[str, Any]) -> str:
    """Accuracy and per-class sensitivity by image source: the shortcut audit."""
    by_source = m.get("per_source") or {}
    if not by_source:
        return (
            '<p class="muted">No image has a known source (the dataset\'s metadata sheets give none), '
            "so no per-source audit.</p>"
        )
    classes = list(next(iter(by_source.values())).get("per_class", {}))
    rows = []
    for name, block in by_source.items():
        pc = block.get("per_class", {})
        cells = [
            _e(name),
            _fmt(block.get("n")),
            _with_ci(block, "accuracy"),
            *(
                f'{_with_ci(pc[c], "sensitivity")} <span class="ci">(n={_fmt(pc[c].get("support"))})</span>'
                if c in pc
                else "n/a"
                for c in classes
            ),
        ]
        rows.append(cells)
    note = (
        '<p class="muted">A model that keys on where an image comes from (a hospital, a scanner, an archive) '
        "rather than on the lungs scores very differently per source; intervals only where a source has "
        "enough test images.</p>"
    )
    return note + _table(["source", "n", "accuracy", *(f"sensitivity {c}" for c in classes)], rows)


def _figures_section(folder: Path) -> str:
    """Every PNG in the evaluation folder, known ones first."""
    if not folder.is_dir():
        return '<p class="warn">No evaluation figures (run the evaluate step).</p>'
    known = dict(EVAL_FIGURES)
    present = sorted(p.name for p in folder.glob("*.png"))
    order = [name for name, _ in EVAL_FIGURES if name in present] + [n for n in present if n not in known]
    if not order:
        return '<p class="warn">No evaluation figures found.</p>'
    return "\n".join(_img(folder / name, known.get(name, Path(name).stem.replace("_", " "))) for name in order)


def _gradcam_section(folder: Path, cam_file: Path, classes: Iterable[str]) -> str:
    """Grad-CAM metrics (lung energy, pointing game vs chance) and the per-class galleries."""
    cam = _read_json(cam_file)
    if cam is None:
        return '<p class="warn">No Grad-CAM outputs (run the gradcam step).</p>'
    rows = [["method", _e(cam.get("method"))], ["target layer", _e(cam.get("target_layer", "last block"))],
            ["test images", _fmt(cam.get("images"))]]
    if "lung_energy" in cam:
        rows += [
            ["share of CAM energy inside the lungs", _fmt(cam.get("lung_energy"))],
            ["lung area fraction (energy share of a uniform map)", _fmt(cam.get("lung_area_fraction"))],
        ]
    else:
        reason = cam.get("lung_energy_absent", "the gradcam step recorded no lung masks")
        rows += [["share of CAM energy inside the lungs", f"not measured: {_e(reason)}"]]
    if "pointing_game" in cam:
        chance = cam.get("pointing_game_chance")
        hit = cam.get("pointing_game")
        ratio = f"{hit / chance:.1f}x chance" if hit is not None and chance else "n/a"
        rows += [
            ["pointing game: CAM peak inside the lesion", f"{_fmt(hit)} ({_e(ratio)})"],
            ["pointing game by chance (mean lesion area fraction)", _fmt(chance)],
            ["lesion IoU of the top 20% of the CAM", _fmt(cam.get("lesion_iou"))],
            ["share of CAM energy inside the lesion", _fmt(cam.get("lesion_energy"))],
        ]
    parts = [_table(["metric", "value"], rows)]
    per_class_keys = [k for k in _CAM_PER_CLASS if cam.get(k)]
    if per_class_keys:
        names = list(dict.fromkeys(n for k in per_class_keys for n in cam[k]))
        body = [[_e(n), *(_fmt(cam[k].get(n)) for k in per_class_keys)] for n in names]
        header = ["true class", *(_CAM_PER_CLASS[k] for k in per_class_keys)]
        parts += ["<h3>By class</h3>", _table(header, body)]
    galleries = {p.name: p for p in folder.glob("gallery-*.png")}
    ordered = [f"gallery-{c.replace(' ', '_')}.png" for c in classes]
    ordered = [n for n in ordered if n in galleries] + sorted(n for n in galleries if n not in ordered)
    if ordered:
        parts.append("<h3>Galleries: most confident correct cases and mistakes per true class</h3>")
        parts += [_img(galleries[n], n.removeprefix("gallery-").removesuffix(".png").replace("_", " ")) for n in ordered]
    return "\n".join(parts)


def _data_section(paths: ResolvedPaths) -> str:
    """The data version and the split's data report."""
    from cxr.dvcops import data_version

    parts = [f"<p>Data version (md5 of <code>data.dvc</code>): <code>{_e(data_version(paths.root) or 'n/a')}</code></p>"]
    rep = _read_json(paths.data_report)
    if rep is None:
        parts.append('<p class="warn">No data report (run the split step).</p>')
        return "\n".join(parts)
    counts = rep.get("counts") or {}
    splits = ("train", "valid", "test")
    rows = [[_e(c), *(_fmt(v.get(s, 0)) for s in splits), _fmt(sum(v.get(s, 0) for s in splits))] for c, v in counts.items()]
    rows.append(
        ["<b>all</b>", *(_fmt(sum(v.get(s, 0) for v in counts.values())) for s in splits), _fmt(rep.get("images"))]
    )
    parts += ["<h3>Images per class and split</h3>", _table(["class", *splits, "total"], rows)]
    dup = rep.get("duplicates") or {}
    if dup:
        drows = [
            ["near-duplicate groups", _fmt(dup.get("groups"))],
            ["images in groups", _fmt(dup.get("images_in_groups"))],
            ["exact copies", _fmt(dup.get("exact_copies"))],
            ["groups crossing splits", _fmt(dup.get("groups_crossing_splits"))],
            ["groups with conflicting labels", _fmt(len(dup.get("label_conflicts") or []))],
        ]
        parts += ["<h3>Duplicates</h3>", _table(["", "count"], drows)]
    sources = rep.get("sources") or {}
    if sources:
        names = sorted({s for v in sources.values() for s in v})
        srows = [[_e(c), *(_fmt(v.get(s, 0)) for s in names)] for c, v in sources.items()]
        parts += ["<h3>Sources per class</h3>", _table(["class", *names], srows)]
    for key, title in (("sizes", "Image sizes"), ("modes", "Image modes")):
        if rep.get(key):
            parts += [f"<h3>{_e(title)}</h3>", _table(["", "images"], [[_e(k), _fmt(v)] for k, v in rep[key].items()])]
    skipped = rep.get("skipped") or []
    parts.append("<h3>Files left out</h3>")
    if skipped:
        parts += [f'<p class="warn">{len(skipped)} file(s) of the source were left out of the data '
                  "(<code>download.policy: skip</code>):</p>",
                  _table(["file", "reason"], [[f"<code>{_e(s.get('path'))}</code>", _e(s.get("reason"))]
                                              for s in skipped])]
    else:
        parts.append('<p class="muted">None: every file of the source is in the data.</p>')
    return "\n".join(parts)


def _probes_section(m: Mapping[str, Any]) -> str:
    """The shortcut probes: accuracy after re-encoding the test images, and with the lungs or their outside blanked."""
    probes = m.get("probes") or {}
    if not probes:
        return '<p class="muted">No shortcut probes were recorded for this model.</p>'
    parts = []
    verdict_class = "warn" if probes.get("shortcut") else "muted"
    parts.append(f'<p class="{verdict_class}">{_e(probes.get("summary", ""))}</p>')
    fmt = probes.get("format") or {}
    if fmt:
        rows = [[_e("all"), _fmt(fmt.get("n")), _fmt(fmt.get("accuracy_original")), _e("the other format"),
                 _fmt(fmt.get("accuracy")), _fmt(fmt.get("changed"))]]
        for name, block in (fmt.get("by_format") or {}).items():
            rows.append([_e(name.upper()), _fmt(block.get("n")), _fmt(block.get("accuracy_original")),
                         _e(str(block.get("reencoded_as", "")).upper()), _fmt(block.get("accuracy")),
                         _fmt(block.get("changed"))])
        parts.append(
            f'<h3>Format</h3><p class="muted">Each test image re-encoded in the other format (PNG as JPEG at quality '
            f'{_fmt(fmt.get("jpeg_quality"))}, JPEG as PNG) and scored again. A drop of {_fmt(fmt.get("threshold"), 2)} '
            "or more on the images of one format means the model reads the encoding (each class of the dataset comes "
            "from its own archives). JPEG to PNG is lossless: that row is a control.</p>"
        )
        parts.append(_table(["stored as", "n", "accuracy", "re-encoded as", "accuracy re-encoded",
                             "answers changed"], rows))
    lungs = probes.get("lungs")
    if lungs:
        rows = [[_fmt(lungs.get("n")), _fmt(lungs.get("accuracy_original")), _fmt(lungs.get("accuracy_lungs_only")),
                 _fmt(lungs.get("accuracy_lungs_blanked")), _fmt(lungs.get("chance"))]]
        parts.append(
            '<h3>Lungs</h3><p class="muted">The test images with everything outside the lung masks blanked, and '
            "with the lungs blanked (set to black). A model that keeps "
            f'{_fmt(100 * float(lungs.get("threshold", 0)), 0)}% or more of its accuracy above chance with the '
            "lungs blanked reads the class from elsewhere.</p>"
        )
        parts.append(_table(["n", "accuracy", "outside the lungs blanked", "lungs blanked", "chance"], rows))
    return "\n".join(parts)


def _training_section(paths: ResolvedPaths) -> str:
    """The per-epoch curves from the train step's history, and the selected epoch."""
    import csv
    import io

    from cxr import figures

    history_path = paths.history
    if not history_path.is_file():
        log.warning("%s: not found; the training curves are left out", history_path)
        return '<p class="warn">No training history (run the train step).</p>'
    with history_path.open(newline="") as fh:
        history = list(csv.DictReader(fh))
    summary = _read_json(paths.train_metrics) or {}
    best = summary.get("best_epoch")
    fig = figures.plot_training_curves(history, best)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    rows = [["epochs run", _fmt(summary.get("epochs_run", len(history)))], ["selected epoch (on validation)", _fmt(best)]]
    rows += [[_e(k.removeprefix("best_").replace("_", " ")), _fmt(v)] for k, v in summary.items() if k.startswith("best_val")]
    rows += [["training speed (images/s)", _fmt(summary.get("train_images_per_s"), 1)]]
    preview = (_img(paths.augmentation_preview, "Train augmentations on one training image: the CPU path (top) and "
                    "the device path (bottom), the same seeds")
               if paths.augmentation_preview.is_file() else "")
    return _img_bytes(buf.getvalue(), "Loss and validation scores per epoch") + _table(["", "value"], rows) + preview


def _lineage_section(settings: Settings, paths: ResolvedPaths, registered: Mapping[str, str] | None) -> str:
    """Which code, data and params made this page, and the MLflow run and registered version it belongs to."""
    from cxr.dvcops import data_version, file_hash
    from cxr.tracking import git_commit

    commit, dirty = git_commit(paths.root)
    rows = [
        ["git commit", f"<code>{_e(commit)}</code>" + (" (with uncommitted changes)" if dirty else "")],
        ["data version (md5 in <code>data.dvc</code>)", f"<code>{_e(data_version(paths.root) or 'n/a')}</code>"],
        ["<code>dvc.lock</code> sha256", f"<code>{_e(file_hash(paths.root / 'dvc.lock') or 'none')}</code>"],
        ["params fingerprint", f"<code>{_e(settings.fingerprint())}</code>"],
    ]
    if registered:
        rows += [
            ["MLflow run", f"<code>{_e(registered.get('run_id'))}</code>"],
            ["registered model version", f"{_e(registered.get('name'))} version {_e(registered.get('version'))}"],
        ]
        note = ""
    else:
        rows += [["MLflow run", "none yet"], ["registered model version", "not registered yet"]]
        note = ('<p class="muted">Built by the report stage, before registration. The copy logged to the MLflow '
                "run (artifact <code>pipeline/report.html</code>) names that run and the registered version; "
                "<code>dvc.lock</code> is the one before this run's stages were recorded.</p>")
    return note + _table(["", ""], rows)


def _params_section(settings: Settings) -> str:
    """Every parameter as one row per key, section by section."""
    from cxr.tracking import flatten

    sections = settings.model_dump(mode="json")
    parts = []
    for name, block in sections.items():
        items = flatten(block) if isinstance(block, dict) else {"": block}
        rows = [[f"<code>{_e(f'{name}.{k}' if k else name)}</code>",
                 _e(json.dumps(v) if isinstance(v, (list, dict)) or v is None else v)] for k, v in items.items()]
        parts += [f"<h3>{_e(name)}</h3>", _table(["key", "value"], rows)]
    return "\n".join(parts)


def build_report(
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
        ("gradcam", "Grad-CAM: where the model looks",
         _gradcam_section(paths.gradcam_reports, paths.cam_metrics_full, settings.base.labels)),
        ("training", "Training", _training_section(paths)),
        ("data", "Data", _data_section(paths)),
        ("params", "Parameters", _params_section(settings)),
    ]
    sections[-1:-1] = list(extra_sections) or [
        ("drift", "Data drift", '<p class="muted">Checked by each pipeline run against the champion, after the '
         "split; its result is the Prefect artifact <code>cxr-drift</code>, an MLflow run tagged "
         "<code>cxr.kind=drift</code>, and a section of the copy of this page logged with the registered "
         "version.</p>"),
    ]
    nav = " ".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in sections)
    body = "\n".join(f'<section id="{sid}"><h2>{_e(title)}</h2>\n{content}</section>' for sid, title, content in sections)
    title = f"{settings.base.model_name}: evaluation report"
    synthetic = (
        '<p class="warn">Trained and evaluated on the synthetic dataset: these numbers say the pipeline works, '
        "not how a model does on radiographs.</p>"
        if settings.download.source == "synthetic"
        else ""
    )
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{_e(title)}</h1>\n"
        f'<p class="muted">Classes: {_e(", ".join(settings.base.labels))}; architecture {_e(settings.train.arch)} '
        f"at {_e(settings.train.image_size)} px; params fingerprint <code>{_e(settings.fingerprint())}</code>.</p>\n"
        f"{synthetic}<nav>{nav}</nav>\n{body}\n</body></html>\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("report written to %s (%.0f kB)", out, out.stat().st_size / 1024)
    return out


def _md_ci(block: Mapping[str, Any], key: str) -> str:
    """'0.912 [0.880, 0.940]' in plain text."""
    point = block.get(key)
    if point is None:
        return "n/a"
    lo, hi = block.get(f"{key}_ci_low"), block.get(f"{key}_ci_high")
    return f"{point:.3f}" if lo is None or hi is None else f"{point:.3f} [{lo:.3f}, {hi:.3f}]"


def _md_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def metrics_markdown(metrics: Mapping[str, Any], cam: Mapping[str, Any] | None = None) -> str:
    """The headline test metrics as Markdown tables (a Prefect artifact): overall, per class, binary, sources, CAM."""
    lines = [f"## Test metrics (n = {metrics.get('n', 'n/a')}, 95% bootstrap CI)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {_md_ci(metrics, key)} |" for key, label in _OVERALL_KEYS if key in metrics]
    cal = metrics.get("calibration") or {}
    for key, label in (("ece", "ECE"), ("brier", "Brier"), ("temperature", "temperature")):
        if cal.get(key) is not None:
            lines.append(f"| {label} | {cal[key]:.3f} |")
    per_class = metrics.get("per_class") or {}
    if per_class:
        lines += ["", "| class | support | " + " | ".join(_PER_CLASS_KEYS) + " |", "|---" * (len(_PER_CLASS_KEYS) + 2) + "|"]
        for name, block in per_class.items():
            cells = [_md_ci(block, k) for k in _PER_CLASS_KEYS]
            lines.append(f"| {_md_cell(name)} | {block.get('support', 'n/a')} | " + " | ".join(cells) + " |")
    binary = metrics.get("binary")
    if binary:
        lines += ["", f"**{_md_cell(binary.get('positive'))} vs rest** (threshold {binary.get('threshold', 0):.3f}): "
                  + ", ".join(f"{k} {_md_ci(binary, k)}" for k in _BINARY_KEYS)]
    by_source = metrics.get("per_source") or {}
    if by_source:
        lines += ["", "| source | n | accuracy |", "|---|---|---|"]
        lines += [f"| {_md_cell(s)} | {b.get('n')} | {_md_ci(b, 'accuracy')} |" for s, b in by_source.items()]
    cam_rows = [(label, (cam or {}).get(key)) for key, label in _CAM_KEYS]
    if any(v is not None for _, v in cam_rows):
        lines += ["", "| Grad-CAM | value |", "|---|---|"]
        lines += [f"| {label} | {value:.3f} |" for label, value in cam_rows if value is not None]
    return "\n".join(lines) + "\n"


_CAM_KEYS = (
    ("lung_energy", "share of CAM energy inside the lungs"),
    ("lung_area_fraction", "lung share of the image (the energy share of a uniform map)"),
    ("pointing_game", "pointing game: peak inside the lesion"),
    ("pointing_game_chance", "pointing game by chance"),
)
