"""The compress report's speed table: the written .pjz run by the runtime's kernels vs dense."""

from __future__ import annotations

import json

import pytest
from torch import nn

from penjing.cli import main
from penjing.models import get_model
from penjing.recipe import RecipeContext, load_recipe, run_recipe
from penjing.report.html import write_html
from penjing.runtime import file_speed_report, load_into

RECIPE = """
model: lenet300
data: digits
steps:
  - prune: {sparsity: 0.9}
  - share: {bits: 4, finetune_epochs: 0}
  - encode: {huffman: true}
"""


def _run(out, digits_data, batches):
    (out / "r.yaml").write_text(RECIPE)
    train, test = digits_data
    ctx = RecipeContext(train=train, test=test, out_dir=out, progress=False, echo=False)
    if batches is not None:
        ctx.artifacts["speed_batches"] = batches
    return run_recipe(load_recipe(out / "r.yaml"), get_model("lenet300", train.tensors[0][:1]), ctx)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits_data):
    out = tmp_path_factory.mktemp("speed")
    return out, _run(out, digits_data, [1, 4])


def test_report_has_the_speed_table_of_the_written_file(run_dir, digits_data):
    out, result = run_dir
    md = (out / "report.md").read_text()
    assert "## Speed on this CPU" in md and "`model.pjz` run by the penjing runtime's kernels" in md
    speed = json.loads((out / "report.json").read_text())["speed"]
    assert [(r["name"], r["batch"]) for r in speed["rows"]] == [(n, b) for n in ("fc1", "fc2", "fc3") for b in (1, 4)]
    # the bytes are the ones the loaded kernels read, the ratios the rows' own times
    loaded = load_into(get_model("lenet300", digits_data[0].tensors[0][:1]), out / "model.pjz", runtime="kernel")
    for r in speed["rows"]:
        layer = loaded.get_submodule(r["name"])
        assert r["weight_bytes"] == layer.bytes_per_call(r["batch"])
        assert r["dense_bytes"] == 4 * layer.in_features * layer.out_features
        assert r["format"] == layer.format and r["kernel"] == speed["isa"]
        assert r["speedup"] == pytest.approx(r["dense_s"] / r["time_s"])
        assert r["bandwidth_fraction"] == pytest.approx(r["weight_bytes"] / speed["bandwidth"] / r["time_s"])
        if r["batch"] == 1:
            assert speed["chosen"][r["name"]] == ("kernel" if r["time_s"] <= r["dense_s"] else "dense")
    for r in speed["rows"]:
        assert f"| {r['name']} | {r['format']} | {r['kernel']} | {r['batch']} | {r['weight_bytes']:,} |" in md
    page = (out / "report.html").read_text()
    assert 'id="speed"' in page and "Measured on this CPU" in page
    assert f"<td>{speed['rows'][0]['weight_bytes']:,}</td>" not in page  # numbers are right-aligned cells
    assert f'<td class="num">{speed["rows"][0]["weight_bytes"]:,}</td>' in page


def test_report_command_keeps_the_speed_section(run_dir):
    out, _ = run_dir
    before = (out / "report.html").read_text()
    (out / "report.html").unlink()
    assert write_html(out).read_text() == before


def test_no_speed_report(tmp_path, digits_data):
    _run(tmp_path, digits_data, [])
    assert "## Speed on this CPU" not in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["speed"] is None
    assert "ran with --no-speed-report" in (tmp_path / "report.html").read_text()


def test_file_speed_report_checks_its_arguments(run_dir):
    out, result = run_dir
    model = result.dense
    with pytest.raises(ValueError, match=r"^batch sizes must be positive integers, got \[1, 0\]$"):
        file_speed_report(out / "model.pjz", model, [1, 0])
    with pytest.raises(ValueError, match=r"^rounds must be at least 1, got 0$"):
        file_speed_report(out / "model.pjz", model, [1], rounds=0)
    wrong = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"model.pjz does not fit the model: missing 0.weight, 0.bias; unexpected fc1"):
        file_speed_report(out / "model.pjz", wrong, [1])
    # the given model is left as it was (the report loads into a copy)
    assert all(type(m) in (nn.Linear, nn.ReLU, nn.Flatten, nn.Sequential, type(model))
               for m in model.modules())


def test_compress_cli_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--speed-batch", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "argument --speed-batch: takes comma-separated positive integers, got '0'" in capsys.readouterr().err


def test_speed_record_says_why_when_the_file_fits_no_model(run_dir):
    from penjing.runtime.report import speed_record

    out, result = run_dir
    wrong = [nn.Sequential(nn.Linear(3, 3)), nn.Sequential(nn.Linear(2, 2))]
    record = speed_record(out / "model.pjz", wrong, [1])
    assert record == {"error": f"Not measured: the file does not load into the model ({out / 'model.pjz'} "
                               "does not fit the model: missing 0.weight, 0.bias; unexpected fc1.bias, "
                               "fc1.weight, fc2.bias)."}
    ok = speed_record(out / "model.pjz", [wrong[0], result.dense], [1])  # the second architecture fits
    assert [r["name"] for r in ok["rows"]] == ["fc1", "fc2", "fc3"] and ok["markdown"].startswith("`model.pjz`")


def test_speed_tables_keep_the_digits_of_microsecond_layers():
    from penjing.core.report import ms_text

    cases = (0.0123194, 1.234e-4, 2e-5, 4.21e-6, 2.6e-8, 0.0)
    assert [ms_text(s) for s in cases] == ["12.319", "0.123", "0.020", "0.0042", "0.000026", "0.000"]
