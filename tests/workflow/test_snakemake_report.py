"""Snakemake's own report (``snakemake --report report.html``) of the tiny run: every table and figure of
results/report/ in it, under its track's category, with a caption; and the page as a real (headless)
browser renders it."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import ROOT, snakemake

TRACKS = ("cls_ptq", "cls_qat", "sr_ptq")
RESULTS = {"results/metrics.csv", "results/report/report.md", "results/report/summary.csv"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=10000"]


def report_data(html: str) -> tuple[dict, dict]:
    """The report's results (path -> entry) and categories (category -> subcategory -> paths), as the
    page's scripts hold them."""
    def var(name):
        m = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\n', html)
        assert m, f"no '{name}' data in the report"
        return json.loads(m.group(1))
    return var("results"), var("categories")


@pytest.fixture(scope="module")
def built_report(tiny_run, tmp_path_factory):
    """``snakemake --report report.html`` of the tiny run: (path, html, results, categories)."""
    work, args = tiny_run
    path = tmp_path_factory.mktemp("snakereport") / "report.html"
    start = time.perf_counter()
    snakemake(*args, "--configfile", str(ROOT / "config/test.yaml"), "--report", str(path), "--nolock")
    print(f"snakemake --report: {time.perf_counter() - start:.1f} s, {path.stat().st_size / 1e6:.2f} MB")
    html = path.read_text(encoding="utf-8")
    return (path, html, *report_data(html))


def report_files(work: Path) -> set[str]:
    """Every table and figure the report rule wrote (Snakemake's hidden markers of directories left out)."""
    base = work / "results/report"
    return {str(p.relative_to(work)) for sub in ("figures", "tables") for p in (base / sub).iterdir()
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.slow
def test_report_holds_every_table_and_figure_by_track(tiny_run, built_report):
    work, _ = tiny_run
    _, html, results, categories = built_report
    files = report_files(work)
    assert any(f.endswith(".pdf") for f in files) and any(f.endswith(".tex") for f in files)
    assert set(results) == files | RESULTS, "a file of results/report/ is missing from the report " \
        "(or one is there twice); add a pattern for it to REPORT_FIGURES / REPORT_TABLES in workflow/rules/common.smk"
    assert set(categories) == {"Results", *TRACKS}
    assert {p for sub in categories["Results"].values() for p in sub} == RESULTS
    for track in TRACKS:
        assert set(categories[track]) == {"Figures", "Tables"}, track
        for sub, paths in categories[track].items():
            assert paths and all(track in Path(p).name for p in paths), (track, sub, paths)
            assert all(p.startswith(f"results/report/{sub.lower()}/") for p in paths), (track, sub)
            # the report shows one row per distinct label set: two files with equal labels would hide one
            labels = [tuple(sorted(results[p]["labels"].items())) for p in paths]
            assert len(set(labels)) == len(labels), (track, sub, labels)
    for path, entry in results.items():
        assert entry["data_uri"].startswith("data:"), path  # self-contained: every file embedded
        assert entry["caption"].strip(), f"{path} has no caption"
        assert "system-message" not in entry["caption"], f"the caption of {path} has an RST error"
        if path.startswith("results/report/") and path not in RESULTS:
            track = next(t for t in TRACKS if t in Path(path).name)
            assert track in entry["caption"], path
            assert "W4A4" in entry["caption"] or "_crops" in path or "PSNR" in entry["caption"], path
    # what the captions say: seeds, backbones, the significance marks
    top1 = results["results/report/tables/cls_ptq_digits_w4a4_top1.md"]
    assert "1 seed (0)" in top1["caption"] and "test_resnet" in top1["caption"]
    assert "<strong>H</strong>" in top1["caption"] and "<strong>O</strong>" in top1["caption"]
    assert "McNemar" in top1["caption"] and "p &lt; 0.05" in top1["caption"]
    assert "only the O mark" in results["results/report/tables/cls_qat_digits_w4a4_top1.md"]["caption"]
    assert "LaTeX" in results["results/report/tables/sr_ptq_edsr_tiny_x2_w4a4.tex"]["caption"]
    assert "edsr_tiny_x2" in results["results/report/figures/sr_ptq_edsr_tiny_x2_crops.png"]["caption"]
    # the workflow description, and no resource fetched from elsewhere
    assert "DQSS quantization benchmark" in html
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"https?:", html)


def chromium() -> str:
    """The browser, or skip; on CI (CI set) a missing browser fails (.ci/run installs it)."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        msg = "chromium is not installed (Debian: apt-get install -y chromium); the report's browser check needs it"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI is set: .ci/run installs it)")
        pytest.skip(msg)
    return exe


def rendered_text(exe: str, page: Path, profile: Path) -> str:
    """The visible text of ``page`` after its scripts ran in headless Chromium (scripts and tags removed)."""
    res = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    dom = res.stdout
    i = dom.find('<div id="app"')
    assert i >= 0, "no app element in the rendered page"
    text = re.sub(r"<script\b.*?</script>", " ", dom[i:], flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def with_view(html: str, view: str) -> str:
    """The report with a script that, once the app is up, calls ``app.setView(view)`` (what a click does)."""
    script = ("<script>function dqssView() { if (typeof app === 'undefined' || !app) "
              "{ return setTimeout(dqssView, 50); } app.setView(" + view + "); } setTimeout(dqssView, 50);</script>")
    i = html.rindex("</body>")
    return html[:i] + script + html[i:]


@pytest.mark.slow
def test_report_renders_in_a_browser(tiny_run, built_report, tmp_path):
    work, _ = tiny_run
    path, html, results, categories = built_report
    exe = chromium()
    start = time.perf_counter()
    text = rendered_text(exe, path, tmp_path / "profile1")
    # the menu lists the categories; the workflow description lists every file (a link each)
    for name in ["Workflow", "Statistics", "Results", *TRACKS, "DQSS quantization benchmark"]:
        assert name in text, name
    missing = [f for f in report_files(work) | RESULTS if Path(f).name not in text]
    assert not missing, f"not in the rendered page: {missing}"

    # one track's tables as a click shows them: the label columns, and a table's caption
    table = "results/report/tables/cls_ptq_digits_w4a4_top1.md"
    page = tmp_path / "view.html"
    page.write_text(with_view(html, json.dumps({"navbarMode": "resultinfo", "category": "cls_ptq",
                                                "subcategory": "Tables", "resultPath": table})), encoding="utf-8")
    text = rendered_text(exe, page, tmp_path / "profile2")
    for label, value in results[table]["labels"].items():
        assert label.upper() in text.upper() and value in text, (label, value)
    assert "cls_ptq: top1 on digits, W4A4." in text and "McNemar" in text
    print(f"browser check: {time.perf_counter() - start:.1f} s")
