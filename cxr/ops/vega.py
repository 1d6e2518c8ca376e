"""Vega for ``dvc plots show`` and ``dvc plots diff``: the page template that carries it, so the plots draw offline.

The page DVC writes loads Vega, Vega-Lite and vega-embed from a CDN unless its HTML template
(``plots.html_template`` in ``.dvc/config``) holds them. ``python -m cxr.ops.vega PATH``, which ``make venv``
runs, fetches the three builds from the npm registry with ``npm pack`` at the versions pinned here, checks each
against its pinned SHA-256, and writes to ``PATH`` a template with the builds inlined: the page then draws
without a network, wherever it is written or copied. ``PATH`` is git-ignored: third-party code is fetched at
set-up, never committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr.core.io import write_text


@dataclass(frozen=True)
class Build:
    """One npm package's browser build: the file inside the package and its expected SHA-256."""

    package: str
    version: str
    member: str
    sha256: str

    @property
    def spec(self) -> str:
        """The ``name@version`` npm fetches."""
        return f"{self.package}@{self.version}"


#: The majors DVC's templates are written for (Vega-Lite 5 specs, vega-embed 6), in the order the page loads
#: them: vega-lite needs vega, vega-embed needs both.
BUILDS = (
    Build(
        "vega",
        "5.33.1",
        "package/build/vega.min.js",
        "463f3db6a40b20e9747b4ed38f37ed0add508838f9141b1cf8366784b07b30c8",
    ),
    Build(
        "vega-lite",
        "5.23.0",
        "package/build/vega-lite.min.js",
        "58c27358e26f2d319cf62f45bc17a4c8362f08645001df2ec8d341eee4097c7f",
    ),
    Build(
        "vega-embed",
        "6.29.0",
        "package/build/vega-embed.min.js",
        "12d02acfbe3ec59ef9a37dd4822a2e04e2961b5bbb671bbe661d2221715b99da",
    ),
)

#: What DVC fills in (dvc_render.html.HTML). No ``{scripts}``: that is where DVC would put its CDN script tags.
PLOTS_PLACEHOLDER = "{plot_divs}"
REFRESH_PLACEHOLDER = "{refresh_tag}"
DVC_PLACEHOLDERS = ("{scripts}", PLOTS_PLACEHOLDER, REFRESH_PLACEHOLDER)

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {versions}: inlined from the npm registry by cxr.ops.vega (make venv), so the page draws offline -->
{scripts_inline}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""

NPM_HINT = (
    "`dvc plots show` draws with Vega, which set-up fetches from the npm registry: install Node.js with npm "
    "(Debian: apt-get install nodejs npm) and run `make venv` again"
)


class VegaError(RuntimeError):
    """The builds could not be fetched or failed their check; the message says which and what to do."""


def check(build: Build, data: bytes) -> str:
    """The build's text once its SHA-256 matches the pinned one and it can sit inside a ``<script>`` element."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != build.sha256:
        raise VegaError(f"{build.spec} {build.member}: SHA-256 {digest}, expected {build.sha256}; nothing written")
    text = data.decode("utf-8")
    lowered = text.lower()
    # Inline, "</script" would end the element early and "<!--" can swallow it; DVC replaces its placeholders
    # anywhere in the template, inside the scripts too.
    for bad in ("</script", "<!--", *DVC_PLACEHOLDERS):
        if bad in lowered:
            raise VegaError(f"{build.spec} {build.member} contains {bad!r}: it cannot be inlined in the page")
    return text


def page_template(scripts: Sequence[tuple[Build, str]]) -> str:
    """The HTML template DVC fills: the builds inlined in order, DVC's plots and refresh tag, no CDN."""
    inline = "\n".join(f"    <script>/* {b.spec} */\n{text}\n    </script>" for b, text in scripts)
    versions = ", ".join(b.spec for b, _ in scripts)
    return PAGE.format(
        refresh_tag=REFRESH_PLACEHOLDER, versions=versions, scripts_inline=inline, plot_divs=PLOTS_PLACEHOLDER
    )


def npm_pack(builds: Sequence[Build], folder: Path) -> dict[str, Path]:
    """``npm pack`` each package into ``folder`` (from npm's cache when it has them); package name -> tarball."""
    npm = shutil.which("npm")
    if npm is None:
        raise VegaError(f"npm not found: {NPM_HINT}")
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
    cmd = [npm, "pack", "--json", "--prefer-offline", *(b.spec for b in builds)]
    try:
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired:
        raise VegaError(f"`npm {' '.join(cmd[1:])}` took over 10 minutes: is the npm registry reachable?") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise VegaError(f"`npm {' '.join(cmd[1:])}` failed: {' / '.join(tail)}")
    return {entry["name"]: folder / entry["filename"] for entry in json.loads(proc.stdout)}


def fetch(builds: Sequence[Build]) -> list[tuple[Build, str]]:
    """Each build's checked text, fetched with npm."""
    with tempfile.TemporaryDirectory(prefix="cxr-vega-") as tmp:
        tarballs = npm_pack(builds, Path(tmp))
        out = []
        for build in builds:
            if build.package not in tarballs:
                raise VegaError(f"npm pack gave no tarball for {build.spec}")
            with tarfile.open(tarballs[build.package]) as tar:
                member = tar.extractfile(build.member)
                if member is None:
                    raise VegaError(f"{build.spec} has no file {build.member}")
                out.append((build, check(build, member.read())))
        return out


def main(argv: Sequence[str] | None = None) -> int:
    """Write the page template to the path given; an error says what is missing and changes nothing."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m cxr.ops.vega TEMPLATE.html", file=sys.stderr)
        return 2
    target = Path(args[0])
    try:
        scripts = fetch(BUILDS)
    except VegaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, page_template(scripts))
    print(f"{target}: Vega for dvc plots ({', '.join(b.spec for b, _ in scripts)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
