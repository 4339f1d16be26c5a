"""GPU arch detection from what the driver reports."""

from __future__ import annotations

from types import SimpleNamespace

from dsv4_tune.policies.gpu import arch_of


def test_cuda_arch_ignores_the_name_torch_puts_in_gcnArchName() -> None:
    props = SimpleNamespace(major=9, minor=0, gcnArchName="NVIDIA H100 80GB HBM3", name="NVIDIA H100 80GB HBM3")
    assert arch_of(props, hip=False) == "sm90"


def test_rocm_arch_drops_feature_suffixes() -> None:
    props = SimpleNamespace(major=9, minor=4, gcnArchName="gfx942:sramecc+:xnack-", name="AMD Instinct MI300X")
    assert arch_of(props, hip=True) == "gfx942"
    assert arch_of(SimpleNamespace(gcnArchName="gfx950"), hip=True) == "gfx950"
