"""Test setup: the Triton interpreter on a CPU box, fresh random inputs every run."""

from __future__ import annotations

import os
import secrets

import pytest
import torch
from hypothesis import settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dsv4_tune.runtime.target import interpreting

# CI replays the same examples every run (a red run is reproducible); locally each run explores anew.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def device() -> str:
    """Where kernels run: the GPU when there is one and the interpreter is off, else the CPU."""
    return "cpu" if interpreting() or not torch.cuda.is_available() else "cuda"


@pytest.fixture
def gen(request: pytest.FixtureRequest) -> torch.Generator:
    """A freshly seeded generator; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("DSV4_TEST_SEED", secrets.randbits(31)))
    print(f"[{request.node.name}] seed={seed}")
    return torch.Generator().manual_seed(seed)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if interpreting() or not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a real GPU")
        for item in items:
            if "gpu_only" in item.keywords:
                item.add_marker(skip)
