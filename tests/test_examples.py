"""The examples run (issue 21): on the CPU on the interpreter at tiny sizes; on a GPU with
torch.compile and under a CUDA graph, each giving the eager step's outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.gpu


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_decode_step_example() -> None:
    results = _load("decode_step").main(["--batch", "2", "--heads", "16"])
    assert results["compiled"], "torch.compile'd step differs from eager"
    if torch.cuda.is_available():
        assert results["cuda_graph"], "the CUDA graph replay differs from eager"


def test_flash_mla_decode_step_example() -> None:
    results = _load("flash_mla_decode_step").main(["--batch", "2", "--heads", "16", "--layers", "2"])
    assert results["same_as_sparse_decode"], "the FlashMLA face differs from sparse_decode"
    if torch.cuda.is_available():
        assert results["cuda_graph"], "the CUDA graph replay differs from eager"
