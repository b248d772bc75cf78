"""`fraudq tune`: run the candidates smallest first, prune with the numbers as they come, pick the winner.

Order: the reference recipe (4-bit, group 128 or the largest valid, damp 0.01, sym), then every candidate by
estimated average bits. A candidate is pruned, never quantized, when
  - its estimated average bits exceed --budget-bits (always);
  - it is larger than a candidate already accepted within the budget (it could not be chosen);
  - its direction is dead: along one size key (group size, layers kept at 8 bits), with the rest of the recipe
    equal, a step that was rejected had no fewer flips than a smaller step; larger steps are not tried.
--no-prune keeps only the budget rule. The reference recipe is never pruned: the report compares with it.

Accepted on validation: flips <= tune_max_flip_rate of the rows, McNemar p >= tune_alpha, |dF1| <=
tune_max_delta_f1. Chosen: the accepted candidate within the budget with the fewest average bits, ties by
fewer flips; none accepted is an honest result (the nearest is shown, exit 0).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fraudq.atomic import atomic_dir
from fraudq.checkpoint import inspect_model
from fraudq.config import Config
from fraudq.errors import BadInput
from fraudq.runtime import resolve_device
from fraudq.tune import report, sizing
from fraudq.tune.candidate import Runner
from fraudq.tune.inputs import validation
from fraudq.tune.space import KEYS, SIZE_KEYS, Recipe, candidates, layer_count
from fraudq.workspace import Hashes, stamp_path, stamp_reasons, write_stamp


@dataclass
class Candidate:
    recipe: Recipe
    reference: bool
    estimate: dict
    status: str = "queued"  # ran (quantized or evaluated now), skipped (finished before), pruned
    pruned_by: str | None = None
    outcome: dict | None = None
    reasons: list[str] = field(default_factory=list)  # why it was rejected; [] = accepted
    kept_layers: list[int] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.recipe.id

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def bits(self) -> float:
        return (self.outcome["size"] if self.outcome else self.estimate)["avg_bits"]

    @property
    def flips(self) -> int:
        return self.outcome["val"]["flips"]

    @property
    def accepted(self) -> bool | None:
        return None if not self.finished else not self.reasons


def judge(val: dict, cfg: Config) -> list[str]:
    reasons = []
    if val["flip_rate"] > cfg.tune_max_flip_rate:
        reasons.append(f"flips {val['flip_rate']:.2%} > {cfg.tune_max_flip_rate:.2%}")
    if val["mcnemar_p"] < cfg.tune_alpha:
        reasons.append(f"McNemar p {val['mcnemar_p']:.3g} < {cfg.tune_alpha:g}")
    if abs(val["delta_f1"]) > cfg.tune_max_delta_f1:
        reasons.append(f"|dF1| {abs(val['delta_f1']):.4f} > {cfg.tune_max_delta_f1:g}")
    return reasons


def direction(recipe: Recipe, key: str) -> tuple:
    return (key, *((k, getattr(recipe, k)) for k in KEYS if k != key))


class Search:
    def __init__(self, cfg: Config, pool: list[Candidate]):
        self.cfg, self.pool = cfg, pool
        self.stopped: dict[tuple, tuple[float, str]] = {}  # direction -> (bits beyond which it is dead, why)

    def best(self) -> Candidate | None:
        passing = [c for c in self.pool if c.accepted and c.bits <= self.cfg.tune_budget_bits]
        return min(passing, key=lambda c: (c.bits, c.flips, self.pool.index(c)), default=None)

    def nearest(self) -> Candidate | None:
        done = [c for c in self.pool if c.finished]
        within = [c for c in done if c.bits <= self.cfg.tune_budget_bits] or done
        return min(within, key=lambda c: (c.flips, abs(c.outcome["val"]["delta_f1"]), c.bits), default=None)

    def prune_reason(self, cand: Candidate) -> str | None:
        if cand.reference:
            return None
        if cand.bits > self.cfg.tune_budget_bits:
            return f"over budget: estimated {cand.bits:.3f} > {self.cfg.tune_budget_bits:g} bits"
        if not self.cfg.tune_prune:
            return None
        best = self.best()
        if best is not None and cand.bits > best.bits:
            return f"larger than accepted {best.id}"
        for key in SIZE_KEYS:
            stop = self.stopped.get(direction(cand.recipe, key))
            if stop and cand.bits > stop[0]:
                return stop[1]
        return None

    def after(self, cand: Candidate) -> None:
        """A rejected step no better than a smaller one along a size key ends that direction."""
        if cand.accepted or not self.cfg.tune_prune:
            return
        for key in SIZE_KEYS:
            line = direction(cand.recipe, key)
            for other in self.pool:
                if (other is not cand and other.finished and direction(other.recipe, key) == line
                        and other.bits < cand.bits and other.flips <= cand.flips):
                    self.stopped[line] = (cand.bits, f"{key} direction stopped: {cand.id} had no fewer flips "
                                                     f"than {other.id}")
                    break


def order(recipes: list[Recipe], model: Path) -> list[Candidate]:
    pool = [Candidate(r, i == 0, sizing.estimate(model, r.bits, r.group_size, r.keep_8bit))
            for i, r in enumerate(recipes)]
    return [pool[0]] + sorted(pool[1:], key=lambda c: c.estimate["avg_bits"])


def _say(out):
    from tqdm import tqdm

    return lambda message: tqdm.write(message, file=out)


def check_inputs(cfg: Config):
    if not cfg.model:
        raise BadInput("missing --model (or model in the config)")
    if not cfg.tune_budget_bits > 0:
        raise BadInput(f"--budget-bits must be a positive number of average bits per weight, got {cfg.tune_budget_bits:g}")
    info = inspect_model(cfg.model, cfg.trust_remote_code, cfg.allow_pickle)
    if info.quant is not None:
        raise BadInput(f"{info.path} is already quantized; tune starts from the original model")
    device = resolve_device("cuda" if cfg.device == "auto" else cfg.device, "tune")
    if cfg.test_data and not Path(cfg.test_data).is_file():
        raise BadInput(f"test_data {cfg.test_data} does not exist")
    return info, device


def run_one(cand: Candidate, runner: Runner, search: Search, layers: int) -> None:
    dynamic, cand.kept_layers = runner.dynamic_for(cand.recipe, layers)
    cand.outcome = runner.run(cand.recipe, dynamic)
    cand.status = "ran" if cand.outcome["quantized"] or cand.outcome["evaluated"] else "skipped"
    cand.reasons = judge(cand.outcome["val"], search.cfg)
    search.after(cand)


def search_all(cfg: Config, pool: list[Candidate], runner: Runner, layers: int, say, err) -> Search:
    from tqdm import tqdm

    search = Search(cfg, pool)
    bar = tqdm(total=len(pool), unit="candidate", file=err, disable=None, desc="fraudq tune")
    try:
        for index, cand in enumerate(pool, start=1):
            bar.set_description_str(f"fraudq tune {cand.id}")
            cand.pruned_by = search.prune_reason(cand)
            if cand.pruned_by:
                cand.status = "pruned"
            else:
                run_one(cand, runner, search, layers)
            remaining = sum(c.status == "queued" for c in pool)
            say(report.progress_line(index, len(pool), cand, remaining, search.best(), search.nearest()))
            bar.update(1)
    finally:
        bar.close()
    return search


def write_tuned(cfg: Config, chosen: Candidate | None, hashes: Hashes, say) -> Path | None:
    """The winner as a normal checkpoint under <work_dir>/tuned/ (atomic); an earlier winner is removed."""
    target = cfg.work_path / "tuned"
    if chosen is None:
        if stamp_path(target).is_file():
            shutil.rmtree(target, ignore_errors=True)
            stamp_path(target).unlink()
            say(f"removed the earlier winner in {target}: no candidate passes now")
        return None
    source = Path(chosen.outcome["checkpoint"])
    inputs = {"candidate": chosen.id, "checkpoint": hashes.model(source)}
    if stamp_reasons(target, inputs, lambda: hashes.model(target)):
        with atomic_dir(target, force=True) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        hashes.forget(target)
        write_stamp(target, "tune", inputs, hashes.model(target))
    return target


def run_tune(cfg: Config, out=None, err=None) -> dict:
    """Searches, writes tune.json / tune.md / the plot and <work_dir>/tuned/; returns tune.json's content."""
    out, err = out or sys.stdout, err or sys.stderr
    say = _say(out)
    cfg = dataclasses.replace(cfg, mode="score", limit=0)
    info, device = check_inputs(cfg)
    tune_dir = cfg.work_path / "tune"
    val = validation(cfg, tune_dir, say)
    space, recipes = candidates(cfg, info.config, device)
    pool = order(recipes, info.path)
    say(f"tune: {len(pool)} candidates ({space} list), budget {cfg.tune_budget_bits:g} bits per weight, "
        f"{val.rows} validation rows; library output in {tune_dir / 'logs'}")
    hashes = Hashes(cfg)
    runner = Runner(cfg, tune_dir, val, hashes, say)
    baseline = runner.baseline()
    search = search_all(cfg, pool, runner, layer_count(info.config), say, err)
    chosen = search.best()
    tuned = write_tuned(cfg, chosen, hashes, say)
    test = report.test_report(cfg, runner, pool[0], chosen, tuned, say) if cfg.test_data else None
    summary = report.write_all(cfg, space, val, baseline, search, chosen, tuned, test, tune_dir, say)
    return summary
