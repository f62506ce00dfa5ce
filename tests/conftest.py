"""Shared test fixtures, and the import path of the tests' helper modules (copies, faultkit, launch, serve)."""

import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

HERE = Path(__file__).resolve().parent
# the helper modules, and the test modules whose small-data builders other tests reuse (test_shards, ...)
sys.path[:0] = [str(HERE)] + sorted(str(p) for p in HERE.iterdir() if p.is_dir() and any(p.glob("test_*.py")))


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Leave no Accelerate state (a process-wide singleton) and no torch thread change behind a test."""
    threads = torch.get_num_threads()
    existed = bool(AcceleratorState._shared_state)
    yield
    torch.set_num_threads(threads)
    if not existed:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(scope="session")
def tiny_audit_build(tmp_path_factory):
    """A tiny audit-case benchmark: its test split gives 20 used and 60 not-used images; OUT/audit is the
    not-used case (candidate 20, reference 40), OUT/audit-used a used case (candidate 10, reference 40)."""
    from fingerprint.benchdata.cases import build_audit_case, select_audit_case

    out = tmp_path_factory.mktemp("audit_build") / "bench"
    build_audit_case(out, case="not_used", n_candidate=20, n_reference=40, level="tiny", seed=0, progress=False)
    select_audit_case(out, out / "audit-used", case="used", n_candidate=10, n_reference=40, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_subsets_build(tmp_path_factory):
    """A tiny 3-subset benchmark (16 reals per subset, 30 generated per generator + 30 from outside)."""
    from fingerprint.benchdata.cases import build_subsets

    out = tmp_path_factory.mktemp("subsets_build") / "bench"
    build_subsets(out, n_subsets=3, level="tiny", seed=0, progress=False)
    return out
