"""The fast engine refuses what is not held to GPTQModel's loop, naming the engine that can do it."""

from __future__ import annotations

import pytest

from fraudq.config import build_config
from fraudq.errors import BadInput
from fraudq.quant.quantize import check_engine_holds


def test_asymmetric_on_cuda_needs_the_library_loop():
    asym = build_config(None, overrides={"sym": False}, environ={})
    with pytest.raises(BadInput, match="--engine gptqmodel"):
        check_engine_holds(asym, "cuda")
    with pytest.raises(BadInput):
        check_engine_holds(asym, "cuda:1")
    check_engine_holds(asym, "cpu")  # held to the library on CPU (tests/quant/test_gptq_fast.py)
    check_engine_holds(build_config(None, overrides={"sym": False, "engine": "gptqmodel"}, environ={}), "cuda")
    check_engine_holds(build_config(None, environ={}), "cuda")  # symmetric


def test_engine_unheld_settings_lets_a_benchmark_measure_asymmetric_on_cuda():
    """The escape hatch is a config key or FRAUDQ_ variable, never a default, and it is what lifts the refusal."""
    asym = build_config(None, overrides={"sym": False}, environ={"FRAUDQ_ENGINE_UNHELD_SETTINGS": "true"})
    assert asym.engine_unheld_settings is True
    check_engine_holds(asym, "cuda")
    assert build_config(None, environ={}).engine_unheld_settings is False
