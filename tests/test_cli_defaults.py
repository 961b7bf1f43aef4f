"""Defaults a new user can trust (issue 22): every --help shows its defaults and names only
flags that exist, pruning fine-tunes by default, a step that loses more than --max-drop
accuracy points is flagged where the user looks, special flag values are named options."""

from __future__ import annotations

import argparse
import html
import re

import pytest
import torch

import penjing as pj
from penjing.cli import build_parser, main
from penjing.core.report import DEFAULT_MAX_DROP, accuracy_drop_warning

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _commands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = _commands()


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_shows_its_default(name):
    parser = COMMANDS[name]
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert "default" in (action.help or "").lower(), f"penjing {name} {action.option_strings[0]}"
    parser.format_help()  # every %(default)s formats


def _mentions(text: str) -> list[tuple[str | None, str]]:
    """``(command, flag)`` for every flag ``text`` names: ``penjing CMD ... --flag`` belongs to
    CMD (up to the end of its clause), any other flag to the command whose help it is."""
    out = []
    for clause in re.split(r"&&|[;()]|\n", text):
        own = re.search(r"penjing (\w+)(.*)", clause)
        head = clause[: own.start()] if own else clause
        out += [(None, f) for f in FLAG.findall(head)]
        if own:
            out += [(own.group(1), f) for f in FLAG.findall(own.group(2).split("#")[0])]
    return out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_names_only_flags_that_exist(name):
    parser = COMMANDS[name]
    text = "\n".join([parser.description or "", *(a.help or "" for a in parser._actions), parser.epilog or ""])
    for command, flag in _mentions(text):
        target = command or name
        assert target in COMMANDS, f"penjing {name} --help names a command `penjing {target}`"
        assert flag in _flags(COMMANDS[target]), f"penjing {name} --help names {flag}, which " \
            f"penjing {target} does not have"


def test_the_mention_check_catches_a_missing_flag():
    # `penjing eval --help` once said "add --weights for its state_dict" without the flag
    assert (None, "--weights") in _mentions("FILE.py:Class (add --weights for its state_dict)")
    assert "--weights" not in _flags(COMMANDS["eval"])
    assert _mentions("penjing compress && penjing bench out/model.pjz --batch 1,32") == \
        [("bench", "--batch")]


def test_prune_fine_tunes_by_default():
    from penjing.commands.prune import CLI_FINETUNE_EPOCHS

    parser = COMMANDS["prune"]
    assert CLI_FINETUNE_EPOCHS > 0
    assert parser.parse_args(["--sparsity", "0.9"]).finetune_epochs == CLI_FINETUNE_EPOCHS
    assert parser.parse_args(["--no-finetune"]).finetune_epochs == 0
    assert f"(default: {CLI_FINETUNE_EPOCHS})" in parser.format_help().replace("\n", " ").replace("  ", " ")


@pytest.fixture(scope="module")
def lenet300_weights(tmp_path_factory):
    from penjing.data import digits

    train, _ = digits()
    torch.manual_seed(0)
    model = pj.models.LeNet300()
    pj.fit(model, train, epochs=3, lr=3e-3, progress=False)
    path = tmp_path_factory.mktemp("defaults") / "lenet300.pt"
    torch.save(model.state_dict(), path)
    return path


def _accuracies(out: str) -> tuple[float, float]:
    before, after = re.search(r"^accuracy ([\d.]+)% -> ([\d.]+)%", out, re.M).groups()
    return float(before), float(after)


def test_prune_090_keeps_its_accuracy_and_no_finetune_warns_loudly(lenet300_weights, tmp_path, capsys):
    args = ["prune", "--weights", str(lenet300_weights), "--sparsity", "0.9", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    before, after = _accuracies(out)
    # measured: 97.78% -> 96.22% with the default 10 epochs, 28.22% without (the reference baseline)
    assert after >= 90.0 and before - after < 5.0, out
    assert main([*args, "--no-finetune", "--out", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    before, after = _accuracies(captured.out)
    assert after < 60.0
    warning = (f"WARNING: pruning (0 fine-tuning epochs) lost {before - after:.2f} accuracy points "
               f"({before:.2f}% -> {after:.2f}%), more than the tolerance of 2 (--max-drop)")
    assert f"penjing prune: {warning}" in captured.err
    assert "!! WARNING: pruning (0 fine-tuning epochs) lost" in captured.out  # under the table
    assert captured.out.rstrip().splitlines()[-2].startswith(warning)  # and the closing lines
    assert all(len(line) <= 80 for line in captured.out.splitlines() if line.startswith("!!"))
    # a tolerance above the loss: no warning
    assert main([*args, "--no-finetune", "--max-drop", "90", "--out", str(tmp_path / "c")]) == 0
    captured = capsys.readouterr()
    assert "WARNING" not in captured.out + captured.err


def test_max_drop_must_be_a_number_of_points(capsys):
    assert main(["prune", "--sparsity", "0.5", "--max-drop", "-1"]) == 2
    assert capsys.readouterr().err.strip() == \
        "penjing prune: error: --max-drop (accuracy points) must be a number >= 0, got -1.0"
    assert main(["lowrank", "--max-drop", "nan"]) == 2
    assert "--max-drop (accuracy points) must be a number >= 0, got nan" in capsys.readouterr().err


def test_accuracy_drop_warning_bounds():
    assert accuracy_drop_warning("s", 0.98, 0.965) is None  # 1.5 points: within the default 2
    assert accuracy_drop_warning("s", 0.98, 0.955, 2.0) is not None  # 2.5 points
    assert accuracy_drop_warning("s", 0.98, 0.5, None) is None  # the check is off
    assert accuracy_drop_warning("s", None, 0.5) is None  # not measured
    assert accuracy_drop_warning("step 2", 0.9822, 0.2044, 2.0) == (
        "WARNING: step 2 lost 77.78 accuracy points (98.22% -> 20.44%), more than the tolerance "
        "of 2 (--max-drop); fine-tune longer or compress less")


def test_lowrank_small_budget_warns_before_it_writes(lenet300_weights, tmp_path, capsys):
    out = tmp_path / "lr"
    assert main(["lowrank", "--weights", str(lenet300_weights), "--params", "0.02", "--epochs", "0",
                 "--no-progress", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "penjing lowrank: WARNING: low-rank factorisation + 0 fine-tuning epochs lost" in captured.err
    assert "**WARNING: low-rank factorisation + 0 fine-tuning epochs lost" in (out / "lowrank.md").read_text()
    size = (out / "model.pjz").stat().st_size
    # one ratio: LeNet-300-100's 50,610 float32 parameters over the written file
    assert f"{4 * 50610 / size:.1f}x smaller than dense fp32 of the original " \
        f"(202,440 B -> {size:,} B file)" in captured.out


def _small_recipe(tmp_path, weights, steps, max_drop=DEFAULT_MAX_DROP):
    from penjing.data import digits
    from penjing.recipe import Recipe, RecipeContext, run_recipe

    train, test = digits()
    model = pj.models.LeNet300()
    model.load_state_dict(torch.load(weights, weights_only=True))
    ctx = RecipeContext(train=train, test=test, out_dir=tmp_path, progress=False, echo=False,
                        max_drop=max_drop)
    return run_recipe(Recipe.from_dict({"steps": steps}), model, ctx), ctx


def test_recipe_step_over_the_tolerance_is_flagged_in_table_and_reports(lenet300_weights, tmp_path):
    result, ctx = _small_recipe(tmp_path, lenet300_weights, [{"prune": {"sparsity": 0.97}}, {"encode": {}}])
    dense, pruned = result.summaries[0].accuracy, result.summaries[1].accuracy
    assert dense - pruned > 0.02
    warning = accuracy_drop_warning("after step 1: prune", dense, pruned)
    assert result.summaries[1].warnings == [warning] and ctx.warnings == [warning]
    assert result.summaries[2].warnings == []  # encoding loses nothing
    assert f"!! {warning[:60]}" in result.summaries[1].to_text(80)
    report = (tmp_path / "report.md").read_text()
    assert report.count(f"> **{warning}**") == 2  # the report's head and under the step's table
    assert html.escape(warning) in (tmp_path / "report.html").read_text()


def test_one_ratio_and_each_png_once_in_the_compress_report(lenet300_weights, tmp_path):
    import hashlib

    from penjing.core.report import RATIO_BASIS, dense_fp32_bytes

    result, _ = _small_recipe(tmp_path, lenet300_weights, [{"prune": {"sparsity": 0.8}},
                                                           {"share": {"bits": 5, "finetune_epochs": 0}},
                                                           {"encode": {}}], max_drop=None)
    size = (tmp_path / "model.pjz").stat().st_size
    ratio = dense_fp32_bytes(result.dense) / size
    assert result.final.file_bytes == size and result.final.ratio == pytest.approx(ratio)
    report = (tmp_path / "report.md").read_text()
    assert RATIO_BASIS in report
    assert f"size {ratio:.1f}x smaller than dense float32 of the original model" in report
    assert f"Deep Compression: {ratio:.1f}x" in report.replace("**", "") or f"(**{ratio:.1f}x**)" in report
    assert f"ratio {ratio:.1f}x (original fp32 / stored)" in report
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert len(images) == len(set(images)) and all((tmp_path / i).exists() for i in images)
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.glob("*.png")]
    assert len(digests) == len(set(digests)), "two byte-identical PNGs in the report folder"
    assert sorted(images) == sorted(p.name for p in tmp_path.glob("*.png"))


def test_the_ratio_of_a_restructured_model_is_against_the_original():
    from penjing.core.report import dense_fp32_bytes, size_ratio
    from penjing.report.summary import summary

    model = pj.models.LeNet300()
    original = dense_fp32_bytes(model)
    pj.lowrank(model, pj.LowRankConfig(rank=4), progress=False)
    own, against = summary(model), summary(model, original=original)
    assert against.reference_bytes == original
    assert against.ratio == pytest.approx(size_ratio(original, against.bytes))
    # factorised layers: dense float32 of the factors is smaller than the original's
    assert own.ratio == pytest.approx(1.0) and against.ratio > 3
    with pytest.raises(ValueError, match="size_ratio takes byte counts >= 0"):
        size_ratio(-1, 3)


def test_reference_baseline_is_announced_with_a_measured_estimate(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PENJING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PENJING_MAX_EPOCHS", "1")
    args = ["ternarize", "--model", "lenet5", "--epochs", "0", "--no-progress", "--max-drop", "100"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert re.search(r"penjing ternarize: no trained lenet5 baseline for this data yet: training it "
                     r"first \(1 epochs on 1,[\d]{3} samples, about \d+ s on this machine, measured\); "
                     r"cached in .*baselines for later runs \(give --weights to use your own\)", err), err
    assert main(args) == 0
    assert "baseline" not in capsys.readouterr().err  # cached: nothing to announce


def test_user_model_without_weights_warns_before_it_runs(tmp_path, capsys):
    path = tmp_path / "net.py"
    path.write_text("from torch import nn\nclass Net(nn.Sequential):\n    def __init__(self):\n"
                    "        super().__init__(nn.Flatten(), nn.Linear(64, 10))\n")
    with pytest.warns(UserWarning, match=r"has no --weights: it runs with its random initial weights"):
        assert main(["prune", "--model", f"{path}:Net", "--sparsity", "0.5", "--no-finetune",
                     "--no-progress", "--max-drop", "100", "--out", str(tmp_path / "o")]) == 0


def test_special_values_are_named_options(capsys):
    assert main(["quantize", "--act-bits", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("penjing quantize: error: QuantConfig.act_bits must be "
                                               "one of [2, 3, 4, 5, 6, 7, 8, 16] (2-8 or 16), got 0")
    assert COMMANDS["quantize"].parse_args(["--activations", "none"]).activations == "none"
    assert COMMANDS["prune"].parse_args(["--no-finetune"]).finetune_epochs == 0
