"""The recipes `fraudq tune` tries: what a candidate may set, its id, the built-in lists, candidate files.

A candidate file (`--candidates FILE.toml`) lists recipes; `[base]` holds values every candidate starts from:

    [base]
    damp = 0.01
    [[candidate]]
    bits = 4
    group_size = 64
    [[candidate]]
    bits = 4
    keep_8bit = 2     # the 2 layers that move the label margin most stay at 8 bits

Keys left out come from the config's GPTQ settings (group_size, damp, sym, desc_act, static_groups) or are off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from fraudq.config import Config, load_toml
from fraudq.errors import BadInput
from fraudq.quant.quantize import VALID_BITS, linear_in_features

REFERENCE_GROUPS = (128, 64, 32, 16)  # GPTQ's default group, 128, or the largest of these the widths allow
SPACES = ("auto", "cpu", "full")


@dataclass(frozen=True)
class Recipe:
    bits: int = 4
    group_size: int = 128
    damp: float = 0.01
    sym: bool = True
    desc_act: bool = False  # act-order (GPTQModel's loop), with static_groups when a group size is set
    static_groups: bool = False
    mse: float = 0.0  # > 0: GPTQModel's scale search, minimising |error|^mse over shrunk ranges (2.4 in GPTQ)
    act_group_aware: bool = False  # GPTQModel's group-aware reordering
    calib_n: int | None = None  # None: the config's calib_n
    calib_data: str = ""  # "": the config's calibration data (less the validation rows when they were split off)
    keep_8bit: int = 0  # the layers most sensitive to the label margin kept at 8 bits

    @property
    def id(self) -> str:
        parts = [f"{self.bits}b", f"g{self.group_size}", "sym" if self.sym else "asym", f"d{self.damp:g}"]
        parts += ["act"] * self.desc_act + ["static"] * self.static_groups + ["gaware"] * self.act_group_aware
        parts += [f"mse{self.mse:g}"] * (self.mse > 0)
        parts += [f"n{self.calib_n}"] * (self.calib_n is not None)
        parts += [f"src-{Path(self.calib_data).stem}"] * bool(self.calib_data)
        parts += [f"keep8x{self.keep_8bit}"] * (self.keep_8bit > 0)
        return "-".join(parts).replace("/", "_")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def needs_library(self) -> bool:
        """Recipes fraudq's engine does not do: act-order, static groups, group-aware order, per-layer overrides."""
        return self.desc_act or self.static_groups or self.act_group_aware or self.keep_8bit > 0


KEYS = tuple(f.name for f in dataclasses.fields(Recipe))
SIZE_KEYS = ("group_size", "keep_8bit")  # along these a recipe grows; a direction is one of them varied alone


def parse_bits(text: str) -> list[int]:
    try:
        bits = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        bits = []
    if not bits or any(b not in VALID_BITS for b in bits):
        raise BadInput(f"--bits must be a comma-separated list of {', '.join(map(str, VALID_BITS))}, got {text!r}")
    return bits


def widths_allow(model_config: dict, group_size: int) -> bool:
    return group_size == -1 or all(w % group_size == 0 for w in linear_in_features(model_config).values())


def layer_count(model_config: dict) -> int:
    return int(model_config.get("text_config", model_config)["num_hidden_layers"])


def reference(model_config: dict) -> Recipe:
    """The reference recipe, GPTQ's defaults: 4-bit, group 128 (or the largest valid), damp 0.01, symmetric, plain order."""
    group = next((g for g in REFERENCE_GROUPS if widths_allow(model_config, g)), -1)
    return Recipe(bits=4, group_size=group, damp=0.01, sym=True)


def builtin(name: str, cfg: Config, model_config: dict, bits: list[int]) -> list[Recipe]:
    """cpu: per width, group -1 and the reference group; at the lowest width below 8 also group 32, asymmetric,
    MSE scale search and one layer kept at 8 bits. full: per width, groups -1/128/64/32 x sym/asym; at the
    reference group damp 0.005 and 0.05, act-order with static groups, MSE, group-aware order, 128/512/all
    calibration rows, and 1, 2 or 4 layers kept at 8 bits (widths below 8)."""
    group = reference(model_config).group_size
    layers = layer_count(model_config)
    recipes: list[Recipe] = [reference(model_config)]
    low = [b for b in bits if b < 8]
    for b in bits:
        at = Recipe(bits=b, group_size=group)
        if name == "cpu":
            recipes += [Recipe(bits=b, group_size=-1), at]
            if low and b == low[0]:
                recipes += [dataclasses.replace(at, group_size=32), dataclasses.replace(at, sym=False),
                            dataclasses.replace(at, mse=2.4), dataclasses.replace(at, keep_8bit=1)]
            continue
        recipes += [Recipe(bits=b, group_size=g, sym=s) for g in (-1, 128, 64, 32) for s in (True, False)]
        recipes += [dataclasses.replace(at, damp=d) for d in (0.005, 0.05)]
        recipes += [dataclasses.replace(at, desc_act=True, static_groups=True), dataclasses.replace(at, mse=2.4),
                    dataclasses.replace(at, act_group_aware=True)]
        recipes += [dataclasses.replace(at, calib_n=n) for n in (128, 512, 0) if n != cfg.calib_n]
        if b < 8:
            recipes += [dataclasses.replace(at, keep_8bit=k) for k in (1, 2, 4) if k < layers]
    return unique([r for r in recipes if widths_allow(model_config, r.group_size)])


def unique(recipes: list[Recipe]) -> list[Recipe]:
    seen: dict[str, Recipe] = {}
    for recipe in recipes:
        seen.setdefault(recipe.id, recipe)
    return list(seen.values())


def _typed(key: str, value, where: str):
    kind = {f.name: f.type for f in dataclasses.fields(Recipe)}[key]
    ok = {"bool": isinstance(value, bool), "str": isinstance(value, str),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "int | None": isinstance(value, int) and not isinstance(value, bool)}[kind]
    if not ok:
        raise BadInput(f"{where}: {key} must be {kind.replace(' | None', '')}, got {value!r}")
    return float(value) if kind == "float" else value


def _recipe(table, where: str, start: dict) -> Recipe:
    if not isinstance(table, dict):
        raise BadInput(f"{where}: expected a table of recipe keys")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise BadInput(f"{where}: unknown candidate key '{unknown[0]}'; allowed: {', '.join(KEYS)}")
    return Recipe(**{**start, **{k: _typed(k, v, where) for k, v in table.items()}})


def read_candidates(path: Path, cfg: Config) -> list[Recipe]:
    data = load_toml(path, "candidate file", "; --candidates takes auto, cpu, full or a TOML file")
    extra = sorted(set(data) - {"base", "candidate"})
    if extra:
        raise BadInput(f"{path}: unknown section '{extra[0]}'; a candidate file holds [base] and [[candidate]] tables")
    start = {"group_size": cfg.group_size, "damp": cfg.damp, "sym": cfg.sym, "desc_act": cfg.desc_act,
             "static_groups": cfg.static_groups}
    start = _recipe(data.get("base", {}), f"{path}: [base]", start).to_dict()
    tables = data.get("candidate", [])
    if not isinstance(tables, list) or not tables:
        raise BadInput(f"{path}: no [[candidate]] tables")
    recipes = [_recipe(t, f"{path}: candidate {i}", start) for i, t in enumerate(tables, start=1)]
    ids = [r.id for r in recipes]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate:
        raise BadInput(f"{path}: candidate {duplicate} is listed twice")
    return recipes


def check(recipe: Recipe, model_config: dict, where: str) -> None:
    """What GPTQModel and the widths allow, checked before any work."""
    problems = [
        (recipe.bits not in VALID_BITS, f"bits must be one of {', '.join(map(str, VALID_BITS))}"),
        (recipe.group_size != -1 and recipe.group_size <= 0, "group_size must be -1 or positive"),
        (recipe.group_size > 0 and not widths_allow(model_config, recipe.group_size),
         f"group_size {recipe.group_size} does not divide the layer widths"),
        (not 0 < recipe.damp < 1, "damp must be between 0 and 1"),
        (recipe.mse < 0, "mse must be 0 (off) or positive"),
        (recipe.static_groups and recipe.group_size == -1, "static_groups needs a group size"),
        (recipe.act_group_aware and (recipe.desc_act or recipe.group_size == -1),
         "act_group_aware needs desc_act off and a group size"),
        (recipe.calib_n is not None and recipe.calib_n < 0, "calib_n must be 0 (all) or positive"),
        (bool(recipe.calib_data) and not Path(recipe.calib_data).is_file(), f"calib_data {recipe.calib_data} does not exist"),
        (recipe.keep_8bit < 0 or recipe.keep_8bit >= layer_count(model_config),
         f"keep_8bit must be between 0 and {layer_count(model_config) - 1}"),
        (recipe.keep_8bit > 0 and recipe.bits == 8, "keep_8bit needs bits below 8"),
    ]
    for bad, message in problems:
        if bad:
            raise BadInput(f"{where}: candidate {recipe.id}: {message}")


def candidates(cfg: Config, model_config: dict, device: str) -> tuple[str, list[Recipe]]:
    """(the list's name, its recipes); the reference recipe is always the first."""
    space = cfg.tune_space
    bits = parse_bits(cfg.tune_bits)
    if space in SPACES:
        name = ("full" if device.startswith("cuda") else "cpu") if space == "auto" else space
        recipes = builtin(name, cfg, model_config, bits)
    else:
        name = space
        recipes = read_candidates(Path(space), cfg)
        for recipe in recipes:
            check(recipe, model_config, space)
        recipes = unique([reference(model_config), *recipes])
    return name, recipes


def engine_for(recipe: Recipe, default_engine: str) -> str:
    """GPTQModel's loop for what fraudq's engine does not do (Recipe.needs_library), else the configured engine.

    fraudq's engine calls the library's Quantizer, so asymmetric and MSE recipes give the library's bytes on CPU
    (tests/cli/test_tune.py holds it to that), on CUDA too (docs/FIDELITY.md)."""
    return "gptqmodel" if recipe.needs_library else default_engine


def layer_pattern(layer: int) -> str:
    """GPTQModel's dynamic key body for every module of decoder layer `layer` (module names
    like model.layers.3.mlp.up_proj)."""
    return rf".*\.layers\.{layer}\..*"


def keep_8bit_dynamic(layers: list[int]) -> dict:
    return {f"+:{layer_pattern(i)}": {"bits": 8} for i in sorted(layers)}


def only_layer_dynamic(layer: int, layers: int) -> dict:
    """Every layer but `layer` left unquantized (negative matches)."""
    return {f"-:{layer_pattern(i)}": {} for i in range(layers) if i != layer}


def quant_settings(recipe: Recipe, cfg: Config, dynamic: dict | None = None) -> tuple[Config, dict]:
    """The config quantize_model reads for this recipe, and its extra GPTQModel settings."""
    engine = "gptqmodel" if dynamic else engine_for(recipe, cfg.engine)
    qcfg = dataclasses.replace(cfg, group_size=recipe.group_size, damp=recipe.damp, sym=recipe.sym,
                               desc_act=recipe.desc_act, static_groups=recipe.static_groups, engine=engine)
    extra = {"mse": recipe.mse, "act_group_aware": recipe.act_group_aware}
    if dynamic:
        extra["dynamic"] = dynamic
    return qcfg, extra
