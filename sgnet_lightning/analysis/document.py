"""Reports as documents: sections of paragraphs, tables and figures, rendered to HTML and Markdown.

The benchmark report (:mod:`sgnet_lightning.analysis.report`) and the sweep report
(:mod:`sgnet_lightning.sweeps.sweep_report`) build a list of :class:`Section` and hand it to
:func:`write_document`, which writes, each atomically:

    <stem>.html               figures embedded as base64 PNG (self-contained: no script, no link), or
                              linked to the PNG files beside it (``embed_figures=False``)
    <stem>.md                 the same content; figures linked to the PNG files
    <figure_dir>/<name>.png   every figure of the document

The sections decide what is shown; this module only decides how, so both reports look alike and a
new block type is added in one place. :func:`check_in_browser` opens a written page in headless
Chromium and counts the images that load.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sgnet_lightning import files
from sgnet_lightning.errors import SgnetError

MISSING = "–"  # shown for a value that is not there (None, NaN, pd.NA)
FIGURE_DPI = 100


# -- the blocks ------------------------------------------------------------------------------------
@dataclass
class Table:
    frame: pd.DataFrame  # shown as is: format numbers before (see fmt, fmt_p); missing cells show MISSING
    caption: str = ""


@dataclass
class Plot:
    name: str  # file stem of the figure's PNG
    caption: str
    png: bytes


@dataclass
class Section:
    title: str
    blocks: list  # of str (a paragraph), Table or Plot


def figure_png(fig: Figure, dpi: int = FIGURE_DPI) -> bytes:
    """PNG bytes of a matplotlib figure; no software/date metadata, so identical input gives identical
    bytes. (``bbox_inches="tight"``: panels of fixed aspect can leave titles outside the figure otherwise.)"""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight",
                pad_inches=0.05)  # fmt: skip
    return buffer.getvalue()


def fmt(value, digits: int = 3) -> str:
    """A number with ``digits`` decimals; MISSING for None, NaN, inf and pd.NA."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)) or value is pd.NA:
        return MISSING
    return f"{value:.{digits}f}"


def fmt_p(p) -> str:
    """A p-value with 3 decimals, ``<0.001`` below that; MISSING when there is none."""
    if p is None or not np.isfinite(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# -- rendering -------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; }
figcaption, .caption { font-size: 0.85em; color: #444; }
"""


def _figure_file(figure_dir: str, name: str) -> str:
    """Relative path of a figure's PNG as pages link it ('' = beside the page)."""
    return f"{figure_dir}/{name}.png" if figure_dir else f"{name}.png"


def render_html(title: str, sections: list[Section], figure_dir: str | None = None) -> str:
    """One HTML page; figures embedded as base64 PNG, or linked to ``figure_dir`` when it is given."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}"
             f"</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>"]  # fmt: skip
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, str):
                parts.append(f"<p>{html.escape(block)}</p>")
            elif isinstance(block, Table):
                if block.caption:
                    parts.append(f"<p class=\"caption\"><b>{html.escape(block.caption)}</b></p>")
                parts.append(block.frame.to_html(index=False, border=0, na_rep=MISSING, escape=True))
            else:
                if figure_dir is None:
                    source = "data:image/png;base64," + base64.b64encode(block.png).decode("ascii")
                else:
                    source = html.escape(_figure_file(figure_dir, block.name))
                image = f'<img src="{source}" alt="{html.escape(block.name)}">'
                parts.append(f"<figure>{image}<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _markdown_cell(value) -> str:
    text = MISSING if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: list[Section], figure_dir: str) -> str:
    """The page as Markdown: pipe tables, figures linked to ``<figure_dir>/<name>.png``."""
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [block, ""]
            elif isinstance(block, Table):
                frame = block.frame
                if block.caption:
                    lines += [f"**{block.caption}**", ""]
                lines.append("| " + " | ".join(_markdown_cell(c) for c in frame.columns) + " |")
                lines.append("|" + "---|" * len(frame.columns))
                for row in frame.itertuples(index=False):
                    lines.append("| " + " | ".join(_markdown_cell(v) for v in row) + " |")
                lines.append("")
            else:
                lines += [f"![{block.name}]({_figure_file(figure_dir, block.name)})", "", f"*{block.caption}*", ""]
    return "\n".join(lines)


def write_document(
    out_dir: str | os.PathLike,
    title: str,
    sections: list[Section],
    stem: str = "report",
    figure_dir: str = "figures",
    embed_figures: bool = True,
) -> tuple[Path, Path]:
    """Write ``<stem>.html``, ``<stem>.md`` and every figure as ``<figure_dir>/<name>.png`` into
    ``out_dir`` (created), each atomically.

    Args:
        figure_dir: folder of the PNGs, relative to ``out_dir`` ('' = ``out_dir`` itself).
        embed_figures: the HTML carries its figures as base64 (a page that can be sent alone);
            False links them to the PNG files, as the Markdown always does.

    Returns:
        (html path, markdown path)
    """
    out_dir = Path(out_dir)
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Plot):
                files.atomic_write_bytes(out_dir / _figure_file(figure_dir, block.name), block.png)
    html_path, md_path = out_dir / f"{stem}.html", out_dir / f"{stem}.md"
    files.atomic_write_text(html_path, render_html(title, sections, None if embed_figures else figure_dir))
    files.atomic_write_text(md_path, render_markdown(title, sections, figure_dir))
    return html_path, md_path


# -- opening a page in a browser -------------------------------------------------------------------
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_PROBE_ID = "sgnet-image-check"
# Runs after every image has loaded or failed; writes what it found into the DOM that --dump-dom prints.
_PROBE = f"""<script>
window.addEventListener("load", function () {{
  var images = Array.from(document.images);
  var loaded = images.filter(function (img) {{ return img.complete && img.naturalWidth > 0; }}).length;
  var out = document.createElement("pre");
  out.id = "{_PROBE_ID}";
  out.textContent = JSON.stringify({{images: images.length, loaded: loaded}});
  document.body.appendChild(out);
}});
</script>"""


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) executable on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def check_in_browser(html_path: str | os.PathLike, browser: str | None = None, timeout_s: float = 120) -> dict:
    """Open an HTML page in headless Chromium and count the images that loaded.

    A copy of the HTML with a small probe script is opened from a temporary folder, so an image that
    points at a file beside the page (instead of being embedded) fails to load and is caught.

    Returns:
        ``{"images": n, "loaded": m}``: ``<img>`` elements, and those with ``naturalWidth > 0``.

    Raises:
        SgnetError: Chromium is not installed (Debian: ``apt-get install chromium``), or did not
            open the page.
    """
    executable = browser or find_chromium()
    if executable is None:
        raise SgnetError(f"Chromium not found (looked for {', '.join(BROWSERS)} on PATH): "
                         "install it, e.g. `apt-get install chromium` on Debian")  # fmt: skip
    page = Path(html_path).read_text(encoding="utf-8")
    page = page.replace("</body>", _PROBE + "\n</body>", 1) if "</body>" in page else page + _PROBE
    with tempfile.TemporaryDirectory(prefix="sgnet-report-check-") as tmp:
        probe_page = Path(tmp) / "report.html"
        probe_page.write_text(page, encoding="utf-8")
        command = [
            executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={Path(tmp) / 'profile'}", "--virtual-time-budget=15000",
            "--dump-dom", probe_page.as_uri(),
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise SgnetError(f"Chromium did not finish opening {html_path} within {timeout_s:g} s") from None
    found = re.search(rf'<pre id="{_PROBE_ID}">(.*?)</pre>', done.stdout, re.S)
    if found is None:
        raise SgnetError(f"Chromium could not open {html_path} (exit {done.returncode}): "
                         f"{done.stderr.strip()[-500:]}")  # fmt: skip
    counts = json.loads(html.unescape(found.group(1)))
    return {"images": int(counts["images"]), "loaded": int(counts["loaded"])}
