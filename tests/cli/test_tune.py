"""`fraudq tune` on the tiny model: the search end to end through the CLI, resuming, mixed precision, the
acceptance rule against a planted bad candidate, the size formula, pruning, and one-line bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import one_line_error, run_cli, write_config
from helpers import own_work_config
from fraudq.config import build_config
from fraudq.errors import BadInput

BAD = "2b-g-1-sym-d0.01-mse0.1"  # 2 bits, one group per row, scales fitted to |error|^0.1: flips rows
CANDIDATES = """
[[candidate]]
bits = 2
group_size = -1
mse = 0.1
[[candidate]]
bits = 4
group_size = -1
[[candidate]]
bits = 8
"""


def test_builtin_lists_respect_the_widths(project):
    from fraudq.checkpoint import inspect_model
    from fraudq.tune.space import candidates

    info = inspect_model(project.model)
    cfg = build_config(overrides={"tune_bits": "3,4,8"}, environ={})
    name, cpu = candidates(cfg, info.config, "cpu")
    assert name == "cpu" and cpu[0].id == "4b-g128-sym-d0.01" and len({r.id for r in cpu}) == len(cpu)
    assert {r.bits for r in cpu} == {3, 4, 8} and any(r.keep_8bit for r in cpu) and any(not r.sym for r in cpu)
    name, full = candidates(cfg, info.config, "cuda")
    assert name == "full" and len(full) > len(cpu)
    assert any(r.desc_act and r.static_groups for r in full) and any(r.act_group_aware for r in full)
    assert {r.keep_8bit for r in full} == {0, 1}  # two layers: at most one kept at 8 bits
    with pytest.raises(BadInput, match="--bits"):
        candidates(build_config(overrides={"tune_bits": "x"}, environ={}), info.config, "cpu")


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def hard_validation(project, root: Path, config: Path) -> Path:
    """60 rows the tiny model is unsure of: dialogues cut to their first turns, kept where the baseline's margin
    lies between 0.15 and 1.5 nats. Full dialogues are so easy that even 2-bit models answer them all alike."""
    from fraudq.demo.synth import generate_dialogues, write_jsonl

    pool = [{**row, "id": f"{row['id']}-{k}", "input": "\n".join(row["input"].split("\n")[:k])}
            for row in generate_dialogues(200, seed=11) for k in (1, 2, 3)]
    write_jsonl(root / "pool.jsonl", pool)
    result = run_cli("eval", "--config", config, "--model", project.model, "--data", root / "pool.jsonl",
                     "--out", root / "pool.json")
    assert result.exit_code == 0, result.output
    margins = {json.loads(line)["id"]: json.loads(line)["score"]
               for line in (root / "pool.predictions.jsonl").read_text(encoding="utf-8").splitlines()}
    chosen = [row for row in pool if 0.15 <= abs(margins[row["id"]]) <= 1.5][:60]
    assert len(chosen) >= 40, len(chosen)
    write_jsonl(root / "val.jsonl", chosen)
    return root / "val.jsonl"


@pytest.fixture(scope="module")
def tune_runs(project, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    config = own_work_config(project, root, "tune.toml")
    val = hard_validation(project, root, config)
    (root / "candidates.toml").write_text(CANDIDATES, encoding="utf-8")
    args = ("tune", "--config", config, "--budget-bits", "13", "--val-data", val, "--candidates", root / "candidates.toml")
    first = run_cli(*args)
    first_json = read_json(root / "runs" / "tune" / "tune.json")
    second = run_cli(*args)
    return {"root": root, "config": config, "val": val, "args": args, "first": first, "first_json": first_json,
            "second": second, "work": root / "runs"}


def by_id(summary: dict) -> dict:
    return {c["id"]: c for c in summary["candidates"]}


def test_tune_picks_a_recipe_and_writes_its_outputs(tune_runs):
    first, summary, work = tune_runs["first"], tune_runs["first_json"], tune_runs["work"]
    assert first.exit_code == 0, first.output
    assert summary["chosen"] is not None and summary["chosen_recipe"]["bits"] in (2, 4, 8)
    for name in ("tune.json", "tune.md", "tune_pareto.png"):
        assert (work / "tune" / name).is_file(), name
    assert (work / "tune" / "tune_pareto.png").stat().st_size > 10_000
    assert (work / "tuned" / "config.json").is_file() and (work / "tuned" / "model.safetensors").is_file()
    markdown = (work / "tune" / "tune.md").read_text(encoding="utf-8")
    assert summary["chosen"] in markdown and "(tune_pareto.png)" in markdown
    candidates = by_id(summary)
    assert candidates["4b-g128-sym-d0.01"]["reference"] and len(candidates) == 4
    for cand in candidates.values():
        if cand["status"] != "pruned":  # the estimate is the same formula on the original shapes
            assert cand["avg_bits"] == cand["estimated_avg_bits"] and cand["avg_bits"] < 16
            assert {"flips", "delta_f1", "delta_auc", "mcnemar_p"} <= set(cand["val"])
    # 8-bit is larger than an accepted 4-bit candidate: never quantized.
    assert candidates["8b-g128-sym-d0.01"]["pruned_by"].startswith("larger than accepted")
    assert "[1/4] 4b-g128-sym-d0.01" in first.stdout and "best so far" in first.stdout
    # The test set only reports: the winner (reloaded from tuned/) beside the reference recipe.
    test = read_json(work / "tune" / "test" / "compare.json")
    assert [m["name"] for m in test["models"]][:2] == ["original", "reference"]
    assert summary["threshold"]["recall"] >= summary["threshold"]["baseline_recall"]
    # compare's threshold file, fitted on the validation rows, beside the winner for `eval --threshold fitted`.
    record = read_json(work / "tuned" / "fraudq_threshold.json")
    assert record["threshold"] == summary["threshold"]["threshold"] and record["fitted_on"]["rows"] == 60
    assert test["fitted"]["fit_rows"] == 60  # the test rows are read at thresholds fitted elsewhere


def test_planted_bad_candidate_is_not_picked(tune_runs):
    summary = tune_runs["first_json"]
    candidates = by_id(summary)
    bad, reference = candidates[BAD], candidates["4b-g128-sym-d0.01"]
    assert bad["val"]["flips"] > 0 and not bad["accepted"], bad  # the premise: it is the smallest, and bad
    assert bad["avg_bits"] < candidates[summary["chosen"]]["avg_bits"]
    assert summary["chosen"] != BAD
    assert candidates[summary["chosen"]]["val"]["flips"] <= reference["val"]["flips"]


def test_second_run_skips_every_finished_candidate(tune_runs):
    second, first_json = tune_runs["second"], tune_runs["first_json"]
    assert second.exit_code == 0, second.output
    summary = read_json(tune_runs["work"] / "tune" / "tune.json")
    for cand in summary["candidates"]:
        if cand["status"] != "pruned":
            assert cand["status"] == "skipped" and not cand["quantized"] and not cand["evaluated"], cand
    assert "ran 0, skipped 3" in second.stdout and summary["chosen"] == first_json["chosen"]
    assert "(stored result)" in second.stdout


def test_mixed_precision_keeps_the_most_sensitive_layer_at_8_bits(tune_runs):
    root, work = tune_runs["root"], tune_runs["work"]
    (root / "mixed.toml").write_text("[[candidate]]\nbits = 4\nkeep_8bit = 1\n", encoding="utf-8")
    args = list(tune_runs["args"])
    args[args.index("--candidates") + 1] = root / "mixed.toml"
    result = run_cli(*args, "--no-prune")  # pruning would drop it: the reference is smaller and accepted
    assert result.exit_code == 0, result.output
    candidates = by_id(read_json(work / "tune" / "tune.json"))
    mixed = candidates["4b-g128-sym-d0.01-keep8x1"]
    ranking = read_json(work / "tune" / "sensitivity" / "4b-g128-sym-d0.01.json")["ranking"]
    assert mixed["status"] == "ran" and mixed["engine"] == "gptqmodel" and len(ranking) == 2
    assert ranking[0]["mean_abs_margin_change"] >= ranking[1]["mean_abs_margin_change"] > 0
    assert mixed["kept_8bit_layers"] == [ranking[0]["layer"]]
    saved = read_json(Path(mixed["checkpoint"]) / "config.json")["quantization_config"]["dynamic"]
    assert saved == {rf"+:.*\.layers\.{ranking[0]['layer']}\..*": {"bits": 8}}
    assert mixed["avg_bits"] == mixed["estimated_avg_bits"] > candidates["4b-g128-sym-d0.01"]["avg_bits"]
    assert mixed["val"]["rows"] == 60  # the checkpoint reloaded in eval
    assert candidates["4b-g128-sym-d0.01"]["status"] == "skipped" and len(candidates) == 2


def test_fast_engine_writes_the_library_bytes_for_asymmetric_mse_recipes(tune_runs, tmp_path):
    """Why tune runs asymmetric and MSE recipes on fraudq's engine: at one row per batch both engines write the
    same bytes (asymmetric, group 32 and the MSE scale search at once)."""
    import torch
    from safetensors.torch import load_file

    from fraudq.quant.quantize import quantize_model

    calib = next((tune_runs["work"] / "tune" / "calib").glob("*.jsonl"))
    outs = []
    for engine in ("gptqmodel", "fraudq"):
        cfg = build_config(tune_runs["config"], {"engine": engine, "quant_batch_tokens": 1, "sym": False,
                                                 "group_size": 32}, environ={})
        outs.append(tmp_path / engine)
        quantize_model(cfg, 4, calib, outs[-1], log=lambda *_: None, extra={"mse": 2.4})
    ours, theirs = (load_file(out / "model.safetensors") for out in outs)
    assert set(ours) == set(theirs) and any(k.endswith(".qzeros") for k in ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    configs = [read_json(out / "config.json")["quantization_config"] for out in outs]
    assert configs[0]["sym"] is False and configs[0]["meta"]["mse"] == 2.4


def test_bad_inputs_are_one_line(project, tmp_path):
    config = write_config(tmp_path / "c.toml", model=str(project.model), work_dir=str(tmp_path / "runs"),
                          calib_data=str(project.train), device="cpu")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[candidate]]\nbits = 4\ncolour = 3\n", encoding="utf-8")
    base = ("tune", "--config", config, "--val-data", project.test)
    one_line_error(run_cli(*base, "--budget-bits", "5", "--candidates", bad), "unknown candidate key 'colour'")
    one_line_error(run_cli(*base, "--budget-bits", "0"), "--budget-bits must be a positive")
    one_line_error(run_cli(*base, "--budget-bits", "-1"), "--budget-bits must be a positive")
    one_line_error(run_cli("tune", "--config", config), "--budget-bits")
    one_line_error(run_cli("tune", "--config", config, "--budget-bits", "5", "--val-data", tmp_path / "none.jsonl"),
                   "does not exist")
    no_calib = write_config(tmp_path / "n.toml", model=str(project.model), work_dir=str(tmp_path / "runs"), device="cpu")
    one_line_error(run_cli("tune", "--config", no_calib, "--budget-bits", "5"), "missing --val-data")
    one_line_error(run_cli(*base, "--budget-bits", "5", "--test-data", project.test), "the validation data is the test data")
    one_line_error(run_cli(*base, "--budget-bits", "5", "--bits", "4,5"), "--bits")
    (tmp_path / "g.toml").write_text("[[candidate]]\nbits = 4\ngroup_size = 48\n", encoding="utf-8")
    one_line_error(run_cli(*base, "--budget-bits", "5", "--candidates", tmp_path / "g.toml"), "does not divide")


def test_validation_split_off_the_calibration_data(project, tmp_path):
    from fraudq.data import read_jsonl
    from fraudq.tune.inputs import validation

    cfg = build_config(overrides={"model": str(project.model), "calib_data": str(project.train),
                                  "tune_val_fraction": 0.25, "seed": 3}, environ={})
    messages = []
    val = validation(cfg, tmp_path, messages.append)
    held, rest = read_jsonl(val.path).rows, read_jsonl(val.calib_source).rows
    total = len(read_jsonl(project.train).rows)
    assert len(held) == val.rows == round(0.25 * total) and len(held) + len(rest) == total
    assert not {r.id for r in held} & {r.id for r in rest}
    assert "split off" in messages[0] and val.split["seed"] == 3
    assert validation(cfg, tmp_path, messages.append).split == val.split  # seeded: the same rows again


def test_quantize_config_carries_the_tune_settings():
    from fraudq.quant import gptqmodel_api

    dynamic = {r"+:.*\.layers\.1\..*": {"bits": 8}, r"-:.*\.layers\.0\..*": {}}
    config = gptqmodel_api.quantize_config(4, 32, 0.01, False, True, True, False, "cpu", False, mse=2.4,
                                           act_group_aware=True, dynamic=dynamic)
    assert (config.mse, config.act_group_aware) == (2.4, True)
    assert config.dynamic_get("model.layers.1.mlp.up_proj", "bits") == 8
    assert config.dynamic_get("model.layers.0.mlp.up_proj") is False  # left unquantized
    assert config.dynamic_get("model.layers.2.mlp.up_proj", "bits", 4) == 4


def test_size_formula():
    from fraudq.tune.sizing import module_bits

    assert module_bits(256, 128, 4, 128) == 256 * 128 * 4 + 2 * 128 * (16 + 4)
    assert module_bits(256, 128, 8, -1) == 256 * 128 * 8 + 128 * (16 + 8)


def _candidate(recipe, bits, flips=None, accepted=None):
    from fraudq.tune.search import Candidate

    cand = Candidate(recipe, False, {"avg_bits": bits, "size_bytes": 0})
    if flips is not None:
        cand.outcome = {"size": {"avg_bits": bits}, "val": {"flips": flips, "delta_f1": 0.0}}
        cand.reasons = [] if accepted else ["rejected"]
    return cand


def test_pruning_rules():
    from fraudq.tune.search import Search
    from fraudq.tune.space import Recipe

    cfg = build_config(overrides={"tune_budget_bits": 6.0}, environ={})
    g_all, g128, g64, g32 = (Recipe(bits=3, group_size=g) for g in (-1, 128, 64, 32))
    pool = [_candidate(g_all, 3.0, flips=2), _candidate(g128, 3.2, flips=3), _candidate(g64, 3.3), _candidate(g32, 3.6),
            _candidate(Recipe(bits=8), 8.2), _candidate(Recipe(bits=4, sym=False), 4.2)]
    search = Search(cfg, pool)
    search.after(pool[1])  # group 128 no better than group -1: the group direction is dead past it
    assert "direction stopped" in search.prune_reason(pool[2])
    assert search.prune_reason(pool[4]).startswith("over budget")
    assert search.prune_reason(pool[5]) is None
    pool[5].outcome, pool[5].reasons = {"size": {"avg_bits": 4.2}, "val": {"flips": 0, "delta_f1": 0.0}}, []
    assert search.best() is pool[5]
    assert search.prune_reason(_candidate(Recipe(bits=4, group_size=32), 4.6)) == f"larger than accepted {pool[5].id}"
    search.cfg = build_config(overrides={"tune_budget_bits": 6.0, "tune_prune": False}, environ={})
    assert search.prune_reason(pool[2]) is None and search.prune_reason(pool[4]).startswith("over budget")


def test_none_passing_is_an_honest_result(tune_runs):
    """Within 10.5 bits only the bad candidate fits: tune says so, shows the nearest, exits 0, leaves no winner."""
    args = list(tune_runs["args"])
    args[args.index("--budget-bits") + 1] = "10.5"
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    summary = read_json(tune_runs["work"] / "tune" / "tune.json")
    assert summary["chosen"] is None and summary["nearest"] == BAD and summary["tuned_dir"] is None
    assert "no candidate passes the rule within 10.5 bits; nearest: " + BAD in result.stdout
    assert not (tune_runs["work"] / "tuned").exists()
    assert not any(c["quantized"] for c in summary["candidates"])


def test_recipes_go_to_the_library_loop_only_for_what_the_fast_engine_does_not_do():
    """Asymmetric and MSE recipes stay on the configured engine, on CUDA as on CPU; act-order, static groups,
    group-aware order and per-layer overrides need GPTQModel's loop."""
    from fraudq.tune.space import Recipe, quant_settings

    cfg = build_config(overrides={"device": "cuda"}, environ={})
    for recipe in (Recipe(bits=4, sym=False), Recipe(bits=4, group_size=32, sym=False, mse=2.4)):
        qcfg, extra = quant_settings(recipe, cfg)
        assert qcfg.engine == "fraudq" and qcfg.sym is False and extra["mse"] == recipe.mse
    for recipe in (Recipe(bits=4, desc_act=True), Recipe(bits=4, static_groups=True), Recipe(bits=4, keep_8bit=1)):
        assert quant_settings(recipe, cfg)[0].engine == "gptqmodel"
    assert quant_settings(Recipe(bits=4), cfg, dynamic={"-:x": {}})[0].engine == "gptqmodel"
