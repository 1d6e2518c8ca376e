"""`dvc plots show` and `dvc plots diff` draw the pipeline's plots offline, with a curve per class on ROC and PR.

The project's own settings are used: dvc.yaml's plots, the class_curves template (.dvc/plots) and the page
template that .dvc/config names (build/vega/plots.html, which `make venv` writes). Chromium opens the page DVC
writes with every host name unresolvable, so nothing from a CDN could load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, make_project, tiny_params

from cxr.core.config import load_settings
from cxr.ops.dvc import run_dvc

pytestmark = pytest.mark.slow

PAGE_TEMPLATE = REPO / "build" / "vega" / "plots.html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: a CDN's host name does not resolve
    "--virtual-time-budget=10000",
)
#: The plots a user wants, in dvc.yaml's order: no plot of every column of the training history.
PLOTS = ["loss", "validation", "confusion", "roc", "precision_recall"]
#: The first colours of tableau10, the class_curves template's colour scheme: one per class.
CLASS_COLOURS = ["#4c78a8", "#f58518", "#e45756", "#72b7b2"]
EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=", re.IGNORECASE)
# Appended to a copy of the page: once the plots have drawn, each plot's canvas (vega-embed's default renderer):
# its size, how many pixels are not white, and how many are exactly each class colour.
PROBE_JS = """<script>window.addEventListener('load', function () { setTimeout(function () {
  var colours = %COLOURS%, out = {};
  document.querySelectorAll('body > div[id]').forEach(function (div) {
    var c = div.querySelector('canvas');
    if (!c) { out[div.id] = null; return; }
    var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, ink = 0, hits = {};
    colours.forEach(function (h) { hits[h] = 0; });
    for (var i = 0; i < d.length; i += 4) {
      if (d[i + 3] > 0 && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) ink++;
      var h = '#' + [d[i], d[i + 1], d[i + 2]].map(function (v) { return ('0' + v.toString(16)).slice(-2); }).join('');
      if (h in hits) hits[h]++;
    }
    out[div.id] = {width: c.width, height: c.height, ink: ink, colours: hits};
  });
  var p = document.createElement('pre'); p.textContent = 'PROBE' + JSON.stringify(out) + 'PROBE';
  document.body.appendChild(p);
}, 2000); });</script>"""
PROBE = PROBE_JS.replace("%COLOURS%", json.dumps(CLASS_COLOURS))


@pytest.fixture(scope="module")
def project(module_tmp: Path) -> Path:
    """A tiny project with the repository's plot settings, its pipeline run by `dvc repro` and committed."""
    if not PAGE_TEMPLATE.is_file():
        pytest.fail(f"{PAGE_TEMPLATE} is missing: `make venv` writes it (it fetches Vega with npm)")
    from cxr.data.download import download

    small = {"download": {"synthetic": {"size": 64}}, "train": {"image_size": 32}, "gradcam": {"per_class": 1}}
    params = tiny_params(**small, evaluate={"n_boot": 20})
    root = make_project(module_tmp / "p", params)
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    (root / "build").mkdir()
    (root / "build" / "vega").symlink_to(PAGE_TEMPLATE.parent)  # where .dvc/config's relative path leads
    s = load_settings(root / "params.yaml")
    download(s.base, s.download, s.paths(root))
    run_dvc(["repro"], root)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "pipeline"], cwd=root, check=True, env=env)
    return root


def _draw(page: Path, tmp_path: Path) -> dict:
    """What Chromium drew of each plot of ``page`` (a copy, with the probe), offline."""
    head, end, tail = page.read_text().rpartition("</body>")  # the last: Vega's code has the string too
    probe = tmp_path / "probe.html"
    probe.write_text(head + PROBE + end + tail)
    proc = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    found = re.search(r"PROBE(\{.*\})PROBE", proc.stdout)
    assert found, f"no probe result from chromium: {proc.stderr[-2000:]}"
    return json.loads(found[1])


def _assert_drawn(drawn: dict) -> None:
    assert list(drawn) == PLOTS
    for plot_id, plot in drawn.items():
        assert plot is not None, f"{plot_id}: no canvas (Vega did not run)"
        assert plot["ink"] > 2000, f"{plot_id}: a blank canvas {plot}"
    for plot_id in ("roc", "precision_recall"):
        # Each class's line in its own colour, not only its legend entry (a few dozen pixels).
        assert min(drawn[plot_id]["colours"].values()) > 100, drawn[plot_id]


def test_the_plots_are_those_a_user_wants_with_a_curve_per_class(project: Path) -> None:
    shown = json.loads(run_dvc(["plots", "show", "--json"], project))["data"]
    assert list(shown) == PLOTS
    classes = set(load_settings(project / "params.yaml").base.labels)
    for plot_id, (x, y) in {"roc": ("fpr", "tpr"), "precision_recall": ("recall", "precision")}.items():
        [plot] = shown[plot_id]
        spec = plot["content"]
        assert spec["encoding"]["color"]["field"] == "class"
        assert (spec["encoding"]["x"]["field"], spec["encoding"]["y"]["field"]) == (x, y)
        assert {row["class"] for row in spec["data"]["values"]} == classes


def test_plots_show_draws_offline(project: Path, tmp_path: Path) -> None:
    out = run_dvc(["plots", "show"], project)
    page = project / "dvc_plots" / "index.html"
    assert page.as_uri() in out
    html = page.read_text()
    assert not EXTERNAL_SCRIPT.search(html) and "cdn.jsdelivr" not in html
    assert "vega@5" in html and "vega-embed@6" in html  # the builds, inline
    if CHROMIUM is None:
        pytest.skip("chromium not installed (make sysdeps)")
    _assert_drawn(_draw(page, tmp_path))


def test_plots_diff_draws_offline(project: Path, tmp_path: Path) -> None:
    diffed = json.loads(run_dvc(["plots", "diff", "HEAD", "--json"], project))["data"]
    assert all(plot["revisions"] == ["workspace", "HEAD"] for [plot] in diffed.values())
    run_dvc(["plots", "diff", "HEAD"], project)
    page = project / "dvc_plots" / "index.html"
    assert not EXTERNAL_SCRIPT.search(page.read_text())
    if CHROMIUM is None:
        pytest.skip("chromium not installed (make sysdeps)")
    _assert_drawn(_draw(page, tmp_path))
