"""The HTML report, `penjing report`, and terminal tables that fit 80 columns."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import pytest

from penjing.cli import main
from penjing.models import get_model
from penjing.recipe import RecipeContext, load_recipe, run_recipe
from penjing.report.text_table import render

RECIPE = """
model: lenet300
data: digits
steps:
  - prune: {sparsity: 0.8}
  - share: {bits: 4, finetune_epochs: 0}
  - encode: {huffman: true}
"""

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits_data):
    out = tmp_path_factory.mktemp("run")
    (out / "r.yaml").write_text(RECIPE)
    train, test = digits_data
    ctx = RecipeContext(train=train, test=test, out_dir=out, progress=False, echo=False)
    result = run_recipe(load_recipe(out / "r.yaml"), get_model("lenet300", train.tensors[0][:1]), ctx)
    return out, result


def test_html_is_self_contained_and_has_every_section(run_dir):
    out, result = run_dir
    page = (out / "report.html").read_text()
    for section in ("steps", "layers", "sparsity", "weights", "cost", "plots", "notes"):
        assert f'id="{section}"' in page, section
    # nothing loaded from elsewhere: every image is inline PNG data
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 4 and all(base64.b64decode(i)[:8] == PNG for i in images)
    assert f"<b>{result.final.ratio:.1f}x</b> smaller" in page
    for layer in ("fc1", "fc2", "fc3"):
        assert f"<td>{layer}</td>" in page
    # energy and latency come from the simulator, dense vs final
    data = json.loads((out / "report.json").read_text())
    assert data["costs"]["final_total"]["energy_pj"] < data["costs"]["dense_total"]["energy_pj"]
    assert "latency dense (us)" in page and "energy" in data["summaries"][-1]["header"]


def test_report_command_rebuilds_the_same_html(run_dir, capsys):
    out, _ = run_dir
    before = (out / "report.html").read_text()
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert "self-contained" in capsys.readouterr().out
    assert (out / "report.html").read_text() == before


def test_report_refuses_foreign_or_tampered_files(tmp_path, run_dir, capsys):
    (tmp_path / "report.json").write_text(json.dumps({"format": "other"}))
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"penjing report: error: {tmp_path / 'report.json'} is not a penjing "
                                       "report (no format='penjing-report')\n")
    data = json.loads((run_dir[0] / "report.json").read_text())
    data["plots"][0]["file"] = "../../etc/passwd.png"
    (tmp_path / "report.json").write_text(json.dumps(data))
    assert main(["report", str(tmp_path)]) == 2
    assert "names a plot '../../etc/passwd.png' that is not a PNG file inside" in capsys.readouterr().err


def test_report_describes_a_pjz_within_the_width(run_dir, capsys):
    out, result = run_dir
    for width in (80, 50):
        assert main(["report", str(out / "model.pjz"), "--width", str(width)]) == 0
        text = capsys.readouterr().out
        pjz = str(out / "model.pjz")  # the file's own path is the one part that may be longer
        assert all(len(line) <= width or line == pjz for line in text.splitlines()), text
        assert "fc1.weight" in text and f"ratio {result.final.ratio:.1f}x" in text


def test_summaries_fit_80_columns_with_the_quoted_numbers_whole(run_dir):
    _, result = run_dir
    resnet_rows = get_model("resnet")
    from penjing import summary

    for s in (*result.summaries, summary(resnet_rows)):
        s.extra_columns.setdefault("energy", ["12.3 nJ"] * len(s.rows))
        text = s.to_text(80)
        lines = text.splitlines()
        assert max(map(len, lines)) <= 80, text
        assert any(f"ratio {s.ratio:.1f}x" in line for line in lines)
        if s.accuracy is not None:
            assert any(f"accuracy {100 * s.accuracy:.2f}%" in line for line in lines)
        for row in s.table_rows():
            assert any(row[0] in line for line in lines)  # layer names are never cut


HEADER = ["layer", "type", "params", "nonzeros", "bytes"]
ROWS = [["features.denseblock4.denselayer16.conv2", "Conv2d", "36,864", "3,686", "4.1 KiB"],
        ["fc", "Linear", "10,250", "1,025", "1.2 KiB"]]


@pytest.mark.parametrize("width", [120, 70, 45, 30])
def test_text_tables_never_cut_a_cell(width):
    text = render(HEADER, ROWS, width, left=2, short_header={"nonzeros": "nnz"})
    lines = text.splitlines()
    assert all(len(line) <= width or any(c in line and len(c) > width - 2 for r in ROWS for c in r)
               for line in lines), text
    for row in ROWS:
        for cell in row[2:]:
            assert any(re.search(rf"(^|\s){re.escape(cell)}(\s|$)", line) for line in lines), (cell, text)


def test_text_table_layouts_in_order():
    assert render(HEADER, ROWS, 120).splitlines()[0].startswith("layer")  # full grid
    narrow = render(HEADER, ROWS, 70, short_header={"nonzeros": "nnz"}).splitlines()
    assert narrow[0] == "layer" and narrow[-1] == "nnz = nonzeros"  # names on their own line
    vertical = render(HEADER, ROWS, 30).splitlines()
    assert vertical[0] == ROWS[0][0] and vertical[1].startswith("  type Conv2d")


@pytest.mark.slow
def test_compress_html_renders_in_headless_chromium(tmp_path):
    """`penjing compress` (the default Deep Compression run), its report.html opened by a real
    browser: the screenshot is a full, non-blank page (docs/report_screenshot.png is one)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    out = tmp_path / "out"
    assert main(["compress", "--no-progress", "--out", str(out)]) == 0
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,5200",
                    f"--screenshot={shot}", (out / "report.html").as_uri()],
                   check=True, timeout=120, capture_output=True)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (5200, 1200)
    # every band of the page holds something (tables or plots), not a blank or error page
    rows = pixels[..., :3].std(axis=(1, 2))
    bands = [rows[i:i + 400].max() for i in range(0, 4800, 400)]
    assert min(bands) > 0.05, bands
