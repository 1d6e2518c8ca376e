"""The page template for `dvc plots`: Vega inlined, no CDN, builds fetched with npm and checked by hash."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from cxr.ops import vega
from cxr.ops.vega import Build, VegaError


def _build(name: str, text: str) -> Build:
    return Build(name, "1.0.0", f"package/build/{name}.min.js", hashlib.sha256(text.encode()).hexdigest())


SCRIPTS = {"vega": "window.vega = {};", "vega-lite": "window.vegaLite = {};", "vega-embed": "window.vegaEmbed = 1;"}


def test_dvc_fills_the_template_with_local_scripts_only(tmp_path: Path) -> None:
    from dvc_render import VegaRenderer, render_html

    builds = [(_build(n, t), t) for n, t in SCRIPTS.items()]
    template = tmp_path / "plots.html"
    template.write_text(vega.page_template(builds))
    rows = [{"class": "COVID", "fpr": 0.0, "tpr": 0.0}, {"class": "COVID", "fpr": 1.0, "tpr": 1.0}]
    out = tmp_path / "dvc_plots" / "index.html"
    render_html([VegaRenderer(rows, "roc", x="fpr", y="tpr")], out, html_template=template)

    page = out.read_text()
    assert "cdn.jsdelivr" not in page and "src=" not in page  # DVC's CDN tags go where {scripts} would be
    assert '<div id = "roc">' in page and "vegaEmbed('#roc', spec)" in page
    # The builds inline, in the order they need each other, before the plots that call them.
    at = [page.index(t) for t in SCRIPTS.values()]
    assert at == sorted(at) and at[-1] < page.index('<div id = "roc">')
    assert "{plot_divs}" not in page and "{refresh_tag}" not in page


def test_a_build_that_differs_from_the_pinned_one_is_refused() -> None:
    build = _build("vega", "window.vega = {};")
    assert vega.check(build, b"window.vega = {};") == "window.vega = {};"
    with pytest.raises(VegaError, match=r"vega@1\.0\.0 .*SHA-256 .* expected"):
        vega.check(build, b"window.vega = {evil: 1};")


@pytest.mark.parametrize("text", ["var s = '</script>';", "x = '<!--'", "y = '{scripts}'", "z = '{plot_divs}'"])
def test_a_build_that_cannot_sit_inline_is_refused(text: str) -> None:
    with pytest.raises(VegaError, match="cannot be inlined"):
        vega.check(_build("vega", text), text.encode())


def _fake_npm(tmp_path: Path, builds: dict[str, str]) -> Path:
    """An `npm` on PATH that answers `npm pack --json SPEC...` from tarballs made here (no network)."""
    store = tmp_path / "tarballs"
    store.mkdir()
    entries = []
    for name, text in builds.items():
        filename = f"{name}-1.0.0.tgz"
        with tarfile.open(store / filename, "w:gz") as tar:
            data = text.encode()
            info = tarfile.TarInfo(f"package/build/{name}.min.js")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        entries.append({"name": name, "version": "1.0.0", "filename": filename})
    (store / "answer.json").write_text(json.dumps(entries))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    npm = bindir / "npm"
    npm.write_text(f'#!/bin/sh\ncp "{store}"/*.tgz . && cat "{store}/answer.json"\n')
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    return bindir


def test_main_writes_the_template_from_what_npm_packs(tmp_path: Path, monkeypatch, capsys) -> None:
    builds = tuple(_build(n, t) for n, t in SCRIPTS.items())
    monkeypatch.setattr(vega, "BUILDS", builds)
    monkeypatch.setenv("PATH", str(_fake_npm(tmp_path, SCRIPTS)) + os.pathsep + os.environ["PATH"])
    target = tmp_path / "build" / "vega" / "plots.html"

    assert vega.main([str(target)]) == 0
    page = target.read_text()
    assert all(text in page for text in SCRIPTS.values())
    assert "vega@1.0.0, vega-lite@1.0.0, vega-embed@1.0.0" in capsys.readouterr().out


def test_a_tampered_tarball_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    builds = tuple(_build(n, t) for n, t in SCRIPTS.items())
    monkeypatch.setattr(vega, "BUILDS", builds)
    monkeypatch.setenv("PATH", str(_fake_npm(tmp_path, {**SCRIPTS, "vega-lite": "steal()"})) + os.pathsep + "/bin")
    target = tmp_path / "plots.html"

    assert vega.main([str(target)]) == 1
    assert not target.exists()
    assert "error: vega-lite@1.0.0 package/build/vega-lite.min.js: SHA-256" in capsys.readouterr().err


def test_without_npm_the_error_says_what_to_install(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    target = tmp_path / "plots.html"

    assert vega.main([str(target)]) == 1
    assert not target.exists()
    err = capsys.readouterr().err
    assert err.startswith("error: npm not found") and "install Node.js with npm" in err and "make venv" in err
