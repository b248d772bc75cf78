"""The command line: parse flags, build the config, call one library function per subcommand."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fraudq.config import build_config
from fraudq.console import command_output, row_progress
from fraudq.errors import BadInput
from fraudq.exits import OneLineUsageErrors, friendly_errors


app = typer.Typer(cls=OneLineUsageErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Shrink a fine-tuned chat LLM classifier with GPTQ and measure what it cost.")

ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="TOML file of settings (see configs/default.toml).")]
Model = Annotated[Optional[str], typer.Option("--model", help="Local model folder (default: the config's model).")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
TrustRemoteCode = Annotated[Optional[bool], typer.Option("--trust-remote-code", help="Run code shipped in the checkpoint.")]
AllowPickle = Annotated[Optional[bool], typer.Option("--allow-pickle", help="Load pickle (.bin/.pt) weights.")]
SkipInvalid = Annotated[bool, typer.Option("--skip-invalid", help="Skip bad rows and report how many, instead of stopping.")]
Device = Annotated[Optional[str], typer.Option("--device", help="cuda or cpu (default: auto).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show library output (default: in <work_dir>/logs/).")]
DType = Annotated[Optional[str], typer.Option(
    "--dtype", help="Unquantized models: auto (the GPTQ kernels' dtype), float32, bfloat16 or float16.")]


def config_from(config_file, **flags):
    return build_config(config_file, overrides=flags)


@app.command()
@friendly_errors
def config(config_file: ConfigFile = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False):
    """Print the effective config (defaults < --config < FRAUDQ_* variables)."""
    cfg = config_from(config_file)
    if as_json:
        typer.echo(json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False))
        return
    for key, value in cfg.to_dict().items():
        typer.echo(f"{key} = {json.dumps(value, ensure_ascii=False)}")


@app.command()
@friendly_errors
def load(model: Annotated[str, typer.Argument(help="Local model folder.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
         device: Device = None, backend: Annotated[Optional[str], typer.Option(help="Kernel for GPTQ models.")] = None,
         trust_remote_code: TrustRemoteCode = None, allow_pickle: AllowPickle = None,
         config_file: ConfigFile = None, verbose: Verbose = False):
    """Load a checkpoint (fp16/bf16/fp32 or GPTQ) and print a summary."""
    cfg = config_from(config_file, device=device, backend=backend, trust_remote_code=trust_remote_code,
                      allow_pickle=allow_pickle)
    # GPTQModel prints its loading chatter on stdout; keep stdout for the summary alone, even with -v.
    shown = contextlib.redirect_stdout(sys.stderr) if verbose else contextlib.nullcontext()
    with command_output(cfg.work_path, "load", verbose), shown:
        from fraudq.checkpoint import describe

        info = describe(cfg, model)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        typer.echo(f"{key:>14}: {value}")


@app.command()
@friendly_errors
def calib(data: Annotated[Optional[str], typer.Option("--data", help="JSONL: chat or labelled rows.")] = None,
          out: Annotated[Optional[Path], typer.Option(
              "--out", help="Calibration file (default: <work_dir>/calib.jsonl).")] = None,
          n: Annotated[Optional[int], typer.Option("--n", help="Rows to sample (0 = all).")] = None,
          max_len: Annotated[Optional[int], typer.Option("--max-len", help="Truncate each row to this many tokens.")] = None,
          seed: Annotated[Optional[int], typer.Option("--seed")] = None,
          model: Model = None, force: Force = False, skip_invalid: SkipInvalid = False,
          trust_remote_code: TrustRemoteCode = None, config_file: ConfigFile = None, verbose: Verbose = False):
    """Build the calibration set through the model's chat template."""
    cfg = config_from(config_file, model=model, calib_n=n, max_len=max_len, seed=seed, calib_file=out,
                      calib_data=data, trust_remote_code=trust_remote_code)
    require(cfg.calib_data, "--data (or calib_data in the config)")
    require(cfg.model, "--model (or model in the config)")
    with command_output(cfg.work_path, "calib", verbose) as say:
        from fraudq.calib import build_calibration

        build_calibration(cfg, cfg.calib_data, cfg.calib_path, force=force, skip_invalid=skip_invalid, log=say,
                          reads=(config_file,))


@app.command()
@friendly_errors
def quantize(bits: Annotated[int, typer.Option("--bits", help="2, 3, 4 or 8.")],
             model: Model = None,
             calib: Annotated[Optional[Path], typer.Option("--calib", help="Calibration file from 'fraudq calib'.")] = None,
             out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: <work_dir>/int<bits>).")] = None,
             group_size: Annotated[Optional[int], typer.Option("--group-size")] = None,
             damp: Annotated[Optional[float], typer.Option("--damp")] = None,
             desc_act: Annotated[Optional[bool], typer.Option("--desc-act/--no-desc-act")] = None,
             sym: Annotated[Optional[bool], typer.Option("--sym/--no-sym")] = None,
             true_sequential: Annotated[Optional[bool], typer.Option("--true-sequential/--no-true-sequential")] = None,
             static_groups: Annotated[Optional[bool], typer.Option("--static-groups/--no-static-groups")] = None,
             batch_size: Annotated[Optional[int], typer.Option(
                 "--batch-size", help="Calibration rows per forward (--engine gptqmodel).")] = None,
             engine: Annotated[Optional[str], typer.Option(
                 "--engine", help="fraudq (fraudq's batched engine) or gptqmodel (the library's own loop).")] = None,
             batch_tokens: Annotated[Optional[int], typer.Option(
                 "--batch-tokens", help="Padded calibration tokens per forward (--engine fraudq).")] = None,
             device: Device = None, force: Force = False, trust_remote_code: TrustRemoteCode = None,
             config_file: ConfigFile = None, verbose: Verbose = False):
    """GPTQ-quantize the model (GPTQModel's math and format) and write a checkpoint plus quant_report.json."""
    cfg = config_from(config_file, model=model, calib_file=calib, group_size=group_size, damp=damp,
                      desc_act=desc_act, sym=sym, true_sequential=true_sequential, static_groups=static_groups,
                      quant_batch_size=batch_size, engine=engine, quant_batch_tokens=batch_tokens, device=device,
                      trust_remote_code=trust_remote_code)
    require(cfg.model, "--model (or model in the config)")
    with command_output(cfg.work_path, "quantize", verbose) as say:
        from fraudq.quant.quantize import quantize_model

        quantize_model(cfg, bits, cfg.calib_path, out or cfg.quant_dir(bits), force=force, log=say)


@app.command(name="eval")
@friendly_errors
def eval_command(model: Annotated[Optional[str], typer.Option("--model", help="Model folder to evaluate.")] = None,
                 data: Annotated[Optional[str], typer.Option("--data", help="Labelled test JSONL.")] = None,
                 mode: Annotated[Optional[str], typer.Option("--mode", help="score or generate.")] = None,
                 batch_size: Annotated[Optional[str], typer.Option("--batch-size", help="Rows per batch, or auto.")] = None,
                 limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate the first N rows only.")] = None,
                 share_prefix: Annotated[Optional[bool], typer.Option(
                     "--share-prefix/--no-share-prefix",
                     help="Score mode: run the prompt prefix all rows share once.")] = None,
                 pack_rows: Annotated[Optional[bool], typer.Option(
                     "--pack-rows/--no-pack-rows",
                     help="Score mode: run a batch's rows as one sequence, without padding.")] = None,
                 fused_kernels: Annotated[Optional[str], typer.Option(
                     "--fused-kernels", help="On CUDA: auto, liger (liger-kernel's fused ops) or off.")] = None,
                 out: Annotated[Optional[Path], typer.Option("--out", help="Results JSON (predictions go beside it).")] = None,
                 threshold: Annotated[Optional[str], typer.Option(
                     "--threshold", help="Score mode: fraud when margin > T; a number, or 'fitted' for the "
                     "threshold compare wrote beside the checkpoint (default: the config's).")] = None,
                 dtype: DType = None,
                 runtime: Annotated[Optional[str], typer.Option(
                     "--runtime", help="hf (fraudq's own) or vllm (the engine the checkpoint is served with).")] = None,
                 tensor_parallel_size: Annotated[Optional[int], typer.Option(
                     "--tensor-parallel-size", help="--runtime vllm: GPUs one engine spreads over.")] = None,
                 data_parallel_size: Annotated[Optional[int], typer.Option(
                     "--data-parallel-size", help="--runtime vllm: engines splitting the rows.")] = None,
                 device: Device = None, backend: Annotated[Optional[str], typer.Option(help="Kernel for GPTQ models.")] = None,
                 force: Annotated[bool, typer.Option(
                     "--force", help="Replace an --out that no fraudq eval wrote.")] = False,
                 skip_invalid: SkipInvalid = False, trust_remote_code: TrustRemoteCode = None,
                 allow_pickle: AllowPickle = None, config_file: ConfigFile = None, verbose: Verbose = False):
    """Evaluate a model: confusion counts, precision, recall, F1, AUC, throughput."""
    from fraudq.eval.results import claim_results
    from fraudq.thresholds import eval_threshold
    from fraudq.workspace import results_name

    cfg = config_from(config_file, mode=mode, eval_batch_size=batch_size, limit=limit, share_prefix=share_prefix,
                      runtime=runtime, tensor_parallel_size=tensor_parallel_size, data_parallel_size=data_parallel_size,
                      pack_rows=pack_rows, fused_kernels=fused_kernels, device=device, backend=backend, test_data=data,
                      dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    model = model or cfg.model
    require(model, "--model")
    require(cfg.test_data, "--data (or test_data in the config)")
    cfg, source = eval_threshold(cfg, model, threshold)
    # A fitted threshold's results go apart, so compare (which evaluates at the config's threshold) keeps its own.
    name = results_name(cfg, model) + (".fitted" if source["from"] == "fitted" else "")
    target = out or cfg.eval_results_path(name)
    reads = (cfg.test_data, model, config_file)
    with (claim_results(target, force, reads), row_progress("eval") as progress,
          command_output(cfg.work_path, "eval", verbose) as say):
        from fraudq.eval.evaluate import evaluate_model

        result = evaluate_model(cfg, model, cfg.test_data, target, skip_invalid=skip_invalid, log=say,
                                progress=progress, threshold_source=source)
    if source.get("data_sha256") and source["data_sha256"] == result["data_sha256"]:
        typer.echo("warning: this threshold was fitted on these same rows, so its recall here is restored by "
                   "construction; judge it on other rows", err=True)


@app.command(name="compare")
@friendly_errors
def compare_command(names: Annotated[list[str], typer.Argument(help="fp16, int8, int4, or model folders / results files.")],
                    data: Annotated[Optional[str], typer.Option("--data", help="Labelled test JSONL.")] = None,
                    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for compare.json / compare.md.")] = None,
                    examples: Annotated[int, typer.Option("--examples", help="Print N flipped rows per model.")] = 0,
                    plot: Annotated[Optional[Path], typer.Option("--plot", help="Folder for PNG plots.")] = None,
                    model: Model = None, mode: Annotated[Optional[str], typer.Option("--mode")] = None,
                    limit: Annotated[Optional[int], typer.Option("--limit")] = None,
                    fit_data: Annotated[Optional[str], typer.Option(
                        "--fit-data", help="Labelled JSONL to fit the thresholds on (default: the test rows).")] = None,
                    dtype: DType = None, device: Device = None, config_file: ConfigFile = None,
                    verbose: Verbose = False):
    """Compare models against the unquantized baseline, evaluating where no current result exists."""
    cfg = config_from(config_file, model=model, test_data=data, mode=mode, limit=limit, dtype=dtype, device=device)
    with command_output(cfg.work_path, "compare", verbose) as say:
        from fraudq.comparison import compare_models

        compare_models(cfg, names, cfg.test_data or None, out or cfg.work_path / "compare", examples=examples,
                       plot_dir=plot, log=say, fit_data=fit_data)


@app.command(name="run")
@friendly_errors
def run_command(model: Model = None,
                calib_data: Annotated[Optional[str], typer.Option("--calib-data", help="JSONL for calibration.")] = None,
                test_data: Annotated[Optional[str], typer.Option("--test-data", help="Labelled test JSONL.")] = None,
                force: Annotated[Optional[list[str]], typer.Option(
                    "--force", metavar="STAGE", help="Rerun this stage (repeatable, or 'all'): calib, quantize-int8, "
                    "quantize-int4, eval-fp16, eval-int8, eval-int4, compare.")] = None,
                examples: Annotated[int, typer.Option("--examples", help="Print N flipped rows per model.")] = 0,
                device: Device = None, config_file: ConfigFile = None):
    """calib -> quantize 8 and 4 -> eval fp16/int8/int4 -> compare; stages whose inputs are unchanged are skipped."""
    from fraudq.pipeline import run_pipeline

    cfg = config_from(config_file, model=model, calib_data=calib_data, test_data=test_data, device=device)
    run_pipeline(cfg, force=force or [], examples=examples)


@app.command(name="tune")
@friendly_errors
def tune_command(budget_bits: Annotated[Optional[float], typer.Option(
                     "--budget-bits", help="Most average bits per weight (scales, zeros, unquantized parameters "
                     "included; the original is 16).")] = None,
                 val_data: Annotated[Optional[str], typer.Option(
                     "--val-data", help="Labelled JSONL that chooses (default: a seeded part of --calib-data, "
                     "kept out of calibration).")] = None,
                 test_data: Annotated[Optional[str], typer.Option(
                     "--test-data", help="Labelled JSONL that only reports the winner and the reference recipe.")] = None,
                 bits: Annotated[Optional[str], typer.Option("--bits", help="Bit widths to search, e.g. 3,4,8.")] = None,
                 candidates: Annotated[Optional[str], typer.Option(
                     "--candidates", help="cpu (small: per width group -1 and 128; at the lowest width also group 32, "
                     "asymmetric, MSE scales, 1 layer at 8 bits), full (groups x sym/asym, damp, act-order, MSE, "
                     "group-aware, calibration size, 1/2/4 layers at 8 bits), auto (full on a GPU) or FILE.toml.")] = None,
                 max_flip_rate: Annotated[Optional[float], typer.Option(
                     "--max-flip-rate", help="Accepted: at most this share of validation answers changed.")] = None,
                 max_delta_f1: Annotated[Optional[float], typer.Option(
                     "--max-delta-f1", help="Accepted: |F1 - baseline F1| at most this.")] = None,
                 prune: Annotated[Optional[bool], typer.Option(
                     "--prune/--no-prune", help="Skip candidates the results so far rule out (the budget always "
                     "applies).")] = None,
                 model: Model = None,
                 calib_data: Annotated[Optional[str], typer.Option("--calib-data", help="JSONL for calibration.")] = None,
                 device: Device = None, config_file: ConfigFile = None):
    """Search GPTQ recipes for the smallest model whose validation answers are not significantly worse."""
    from fraudq.tune.search import run_tune

    cfg = config_from(config_file, tune_budget_bits=budget_bits, tune_val_data=val_data, test_data=test_data,
                      tune_bits=bits, tune_space=candidates, tune_max_flip_rate=max_flip_rate,
                      tune_max_delta_f1=max_delta_f1, tune_prune=prune, model=model, calib_data=calib_data,
                      device=device)
    run_tune(cfg)


@app.command()
@friendly_errors
def demo(out: Annotated[Path, typer.Option("--out", help="Folder for the demo's data, model and runs.")] = Path("fraudq-demo"),
         force: Annotated[bool, typer.Option("--force", help="Write into a non-empty folder and redo every step.")] = False,
         train_rows: Annotated[Optional[int], typer.Option("--train-rows", hidden=True)] = None,
         test_rows: Annotated[Optional[int], typer.Option("--test-rows", hidden=True)] = None,
         epochs: Annotated[Optional[float], typer.Option("--epochs", hidden=True)] = None):
    """Generate dialogues, train a tiny classifier, then 'fraudq run' it on CPU (1-2 minutes, no downloads)."""
    from fraudq.demo.run import run_demo

    run_demo(out, force=force, train_rows=train_rows, test_rows=test_rows, epochs=epochs)


def require(value, what: str) -> None:
    if not value:
        raise BadInput(f"missing {what}")


def main() -> None:
    app(prog_name="fraudq")
