"""The backend registry, the lean import, and python -m t2i_fast.info."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

from t2i_fast import backends, ops


def _args():
    h = torch.randn(1, 4, 2, 2)
    key = torch.randn(1, 4, 3)
    return h, key, key


def test_explicit_backend_that_cannot_run_raises_with_reasons():
    with pytest.raises(ops.BackendUnavailable, match="cuda.*cannot run on cpu"):
        ops.memory_read(*_args(), impl="cuda")


def test_choice_order_impl_then_context_then_env(monkeypatch):
    monkeypatch.setenv("T2I_FAST_BACKEND", "cuda")
    assert backends.requested() == "cuda"
    with ops.use_backend("reference"):
        assert backends.requested() == "reference"
        assert backends.requested("cpu") == "cpu"
        with ops.use_backend("auto"):
            assert backends.requested() == "auto"
    with pytest.raises(ops.BackendUnavailable):  # the env var is an explicit request
        ops.memory_read(*_args())
    monkeypatch.setenv("T2I_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="T2I_FAST_BACKEND"):
        ops.memory_read(*_args())
    with pytest.raises(ValueError, match="use_backend"):
        with ops.use_backend("gpu"):
            pass


def test_auto_falls_back_with_one_warning(monkeypatch):
    monkeypatch.delenv("T2I_FAST_BACKEND", raising=False)
    monkeypatch.setattr(backends, "AUTO_ORDER", {"cpu": ("cuda", "reference")})
    monkeypatch.setattr(backends, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            ops.memory_read(*_args())
    messages = [str(w.message) for w in caught if "t2i_fast" in str(w.message)]
    assert len(messages) == 1 and "uses the reference backend" in messages[0]


def test_auto_on_cpu_prefers_the_cpu_kernels(monkeypatch):
    monkeypatch.delenv("T2I_FAST_BACKEND", raising=False)
    expected = "cpu" if not backends.unavailable("cpu", "dynamic_memory", "cpu",
                                                 torch.float32) else "reference"
    assert backends.select("dynamic_memory", "cpu", torch.float32) == expected


def test_import_is_lean():
    """import t2i_fast(.ops) initialises no CUDA, imports no Triton, loads no extension."""
    code = ("import sys, torch, t2i_fast, t2i_fast.ops\n"
            "assert 'triton' not in sys.modules, 'triton imported'\n"
            "assert 't2i_fast._C' not in sys.modules, 'extension loaded'\n"
            "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_info_lists_every_op_and_backend():
    out = subprocess.run([sys.executable, "-m", "t2i_fast.info"], check=True,
                         capture_output=True, text=True).stdout
    assert "torch " in out and "triton " in out and "extension t2i_fast._C" in out
    for op in backends.KERNELS:
        section = out.split(op + "\n", 1)[1]
        for device in ("cpu", "cuda"):
            for name in backends.BACKENDS:
                assert f"  {device:4s} {name:9s} " in section
