"""The backend registry: the table, limits and fallback, the earned CUDA order, the input
contract's edge cases, the lean import, and python -m t2i_fast.info."""
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from t2i_fast import _ext, backends, ops
from t2i_fast.ops import _checks

from conftest import FAST_BACKENDS, padding_mask, require

ROOT = Path(__file__).resolve().parent.parent


def _memory_args(batch=1, slots=3):
    h = torch.randn(batch, 4, 2, 2)
    key = torch.randn(batch, 4, slots)
    return h, key, key


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.delenv("T2I_FAST_BACKEND", raising=False)
    monkeypatch.setattr(backends, "_warned", set())


def _t2i_warnings(caught):
    return [str(w.message) for w in caught if str(w.message).startswith("t2i_fast:")]


# ---- choice of the backend ------------------------------------------------------------------

def test_explicit_backend_that_cannot_run_raises_with_reasons():
    with pytest.raises(ops.BackendUnavailable, match="cuda.*cannot run on cpu.*does not run on cpu"):
        ops.memory_read(*_memory_args(), impl="cuda")


def test_choice_order_impl_then_context_then_env(monkeypatch):
    monkeypatch.setenv("T2I_FAST_BACKEND", "cuda")
    assert backends.requested() == "cuda"
    with ops.use_backend("reference"):
        assert backends.requested() == "reference"
        assert backends.requested("cpu") == "cpu"
        with ops.use_backend("auto"):
            assert backends.requested() == "auto"
    with pytest.raises(ops.BackendUnavailable):  # the env var is an explicit request
        ops.memory_read(*_memory_args())
    monkeypatch.setenv("T2I_FAST_BACKEND", "fastest")
    with pytest.raises(backends.UnknownBackend, match="T2I_FAST_BACKEND.*'fastest'"):
        ops.memory_read(*_memory_args())
    with pytest.raises(backends.UnknownBackend, match="use_backend"):
        with ops.use_backend("gpu"):
            pass


def test_auto_on_cpu_prefers_the_cpu_kernels(fresh_warnings):
    assert backends.auto_order("dynamic_memory", "cpu") == ("cpu", "reference")
    require("cpu", "dynamic_memory", torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.select("dynamic_memory", "cpu", torch.float32, batch=2,
                               slots=5) == "cpu"


def test_auto_passes_over_an_unavailable_backend_with_one_warning(monkeypatch, fresh_warnings):
    monkeypatch.setattr(backends, "CPU_ORDER", ("cuda", "reference"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            ops.memory_read(*_memory_args())
    messages = _t2i_warnings(caught)
    assert len(messages) == 1, messages
    assert "runs on the reference backend (cuda cannot: cuda does not run on cpu" in messages[0]


def test_limits_send_auto_to_the_next_backend_and_make_explicit_requests_raise(
        monkeypatch, fresh_warnings):
    """The Triton word-region kernels take |gamma1| <= GAMMA1_LIMIT: beyond it, auto falls over
    to the next backend of the order, with one warning that says why."""
    require("triton", "word_region_similarity", torch.float32)
    if torch.cuda.is_available():
        pytest.skip("uses the Triton interpreter on CPU tensors")
    from t2i_fast.kernels.word_region import GAMMA1_LIMIT
    monkeypatch.setattr(backends, "CPU_ORDER", ("triton", "reference"))
    gen = torch.Generator().manual_seed(0)
    regions = torch.randn(2, 16, 3, 3, generator=gen)
    words = torch.randn(2, 16, 4, generator=gen)
    lens = torch.tensor([4, 2])
    inside, beyond = GAMMA1_LIMIT / 20, GAMMA1_LIMIT * 1.25
    assert backends.select("word_region_similarity", "cpu", torch.float32, images=2,
                           captions=2, slots=4, gamma1=inside) == "triton"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            got = ops.word_region_similarity(regions, words, lens, gamma1=beyond)
    messages = _t2i_warnings(caught)
    assert len(messages) == 1 and "reference backend (triton cannot: |gamma1| = 100" in \
        messages[0], messages
    expected = ops.word_region_similarity_reference(regions, words, lens, beyond, 5.0)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ops.BackendUnavailable, match=r"\|gamma1\| = 100 > 80"):
        ops.word_region_similarity(regions, words, lens, gamma1=beyond, impl="triton")


@pytest.fixture
def fresh_cuda_limits():
    """The CUDA limits are read from the extension once per process: read them again."""
    backends._cuda_limit_values.cache_clear()
    yield
    backends._cuda_limit_values.cache_clear()


def test_cuda_limits_come_from_the_extension(monkeypatch, fresh_cuda_limits):
    monkeypatch.setattr(_ext, "build_info", lambda: {"cuda": True, "cuda_max_slots": 32,
                                                     "cuda_max_batch": 65535})
    limits = backends.TABLE["cuda"].limits
    assert limits("dynamic_memory", dict(batch=8, slots=32)) == ()
    assert "T = 40 word slots > 32" in limits("memory_read", dict(batch=8, slots=40))[0]
    assert "captions = 70000 > 65535" in limits(
        "word_region_similarity", dict(images=4, captions=70000, slots=18, gamma1=4.0))[0]
    monkeypatch.setattr(_ext, "build_info", lambda: {"cuda": True})
    backends._cuda_limit_values.cache_clear()
    assert "rebuild" in limits("dynamic_memory", dict(batch=1, slots=1))[0]


def test_check_backend_refuses_before_work_starts():
    backends.check_backend("auto", "cpu")
    backends.check_backend("reference", "cpu")
    with pytest.raises(ops.BackendUnavailable, match="'cuda' cannot run on cpu"):
        backends.check_backend("cuda", "cpu")
    with pytest.raises(backends.UnknownBackend, match="'bogus'"):
        backends.check_backend("bogus", "cpu")


# ---- the CUDA order is earned by a committed GPU record ------------------------------------

def _validation_module():
    spec = importlib.util.spec_from_file_location("validation",
                                                  ROOT / "benchmarks" / "validation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_packaged_cuda_order_matches_the_committed_records():
    validation = _validation_module()
    derived = validation.derive(validation.load_records())
    assert backends.validation() == derived, \
        "t2i_fast/validation.json is out of date: run python benchmarks/validation.py"
    for op in backends.KERNELS:
        assert backends.auto_order(op, "cuda")[-1] == "reference"


def _record(date, tests, timings=None):
    return {"device": "GPU X", "versions": {}, "date": date, "commit": "abc", "path": date,
            "tests": tests, "timings_ms": timings or {}}


def test_validation_rule_on_synthetic_records(monkeypatch):
    validation = _validation_module()
    monkeypatch.setattr(validation, "DEVELOPMENT", {})
    ok, bad = {"passed": 3, "failed": 0}, {"passed": 2, "failed": 1}
    assert validation.derive([])["auto_order_cuda"]["memory_read"] == []
    # a passing record validates; without timings the table order holds
    first = _record("2026-12-01", {"cuda": {"memory_read": ok}, "triton": {"memory_read": ok}})
    assert validation.derive([first])["auto_order_cuda"]["memory_read"] == ["triton", "cuda"]
    # timings put the faster first
    timed = _record("2026-12-02", {"cuda": {"memory_read": ok}},
                    {"memory_read": {"cuda": 0.1, "triton": 0.2}})
    assert validation.derive([first, timed])["auto_order_cuda"]["memory_read"] == \
        ["cuda", "triton"]
    # a newer failing record withdraws the backend; a skipped-only one changes nothing
    failing = _record("2026-12-03", {"cuda": {"memory_read": bad}})
    skipped = _record("2026-12-04", {"triton": {"memory_read": {"passed": 0, "skipped": 4}}})
    order = validation.derive([first, timed, failing, skipped])["auto_order_cuda"]
    assert order["memory_read"] == ["triton"] and order["dynamic_memory"] == []


# ---- one input contract, the same on every backend ----------------------------------------

def test_lengths_must_be_integers():
    regions, words = torch.randn(2, 8, 2, 2), torch.randn(2, 8, 5)
    for lens in ([3.7, 5.0], [3, 5.0], [True, 2]):
        with pytest.raises(TypeError, match="cap_lens must hold integers"):
            ops.word_region_similarity(regions, words, lens)
    with pytest.raises(TypeError, match="cap_lens must be an int32/int64 tensor"):
        ops.word_region_similarity(regions, words, torch.tensor([3.0, 5.0]))
    with pytest.raises(ValueError, match=r"1\.\.T = 1\.\.5.*0\.\.6"):
        ops.word_region_similarity(regions, words, [0, 6])


def test_length_values_are_not_read_off_the_host_unless_asked(monkeypatch):
    """On a non-CPU device the check reads no tensor data (a meta tensor has none to read), so
    it costs no host-device synchronisation; T2I_FAST_CHECKS=full asks for the value check."""
    meta = torch.device("meta")
    lens = torch.empty(3, dtype=torch.long, device=meta)
    monkeypatch.delenv(_checks.CHECKS_ENV, raising=False)
    assert _checks.lengths("op", "cap_lens", lens, 3, 5, meta).device == meta
    monkeypatch.setenv(_checks.CHECKS_ENV, "full")
    with pytest.raises((NotImplementedError, RuntimeError)):  # it now reads the values
        _checks.lengths("op", "cap_lens", lens, 3, 5, meta)
    monkeypatch.setenv(_checks.CHECKS_ENV, "some")
    with pytest.raises(ValueError, match="T2I_FAST_CHECKS must be 'full' or unset"):
        _checks.full_checks()


def _empty_cases():
    """(op name, call, expected output shapes) for inputs with a zero batch or zero pixels."""
    def memory(b, h, w):
        x, key = torch.randn(b, 4, h, w), torch.randn(b, 4, 3)
        mask = padding_mask([2] * b, 3)
        return "dynamic_memory", (lambda impl: ops.dynamic_memory(
            x, key, key, mask, torch.randn(8), torch.randn(1), impl=impl)), [(b, 4, h, w)]

    def similarity(bi, bc):
        regions, words = torch.randn(bi, 8, 2, 3), torch.randn(bc, 8, 4)
        return "word_region_similarity", (lambda impl: ops.word_region_similarity(
            regions, words, [2] * bc, impl=impl)), [(bi, bc)]

    def attention(b):
        words, regions = torch.randn(b, 8, 4), torch.randn(b, 8, 2, 3)
        return "word_region_attention", (lambda impl: ops.word_region_attention(
            words, regions, 4.0, impl=impl)), [(b, 8, 4), (b, 4, 2, 3)]

    def gate(b, h):
        x = torch.randn(b, 4, h, 2)
        return "response_gate", (lambda impl: ops.response_gate(
            x, torch.randn_like(x), torch.randn(8), torch.randn(1), impl=impl)), [(b, 4, h, 2)]

    return [memory(0, 3, 3), memory(2, 0, 3), similarity(0, 3), similarity(2, 0), attention(0),
            gate(0, 2), gate(2, 0)]


@pytest.mark.parametrize("backend", ("reference",) + FAST_BACKENDS)
@pytest.mark.parametrize("case", range(len(_empty_cases())))
def test_empty_inputs_give_the_same_empty_result_on_every_backend(backend, case):
    op, call, shapes = _empty_cases()[case]
    if backend != "reference":
        require(backend, op, torch.float32)
    outs = call(backend)
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert [tuple(o.shape) for o in outs] == shapes


@pytest.mark.parametrize("backend", ("reference",) + FAST_BACKENDS)
def test_no_slots_or_no_regions_is_one_clear_error_on_every_backend(backend):
    if backend != "reference":
        require(backend, "word_region_similarity", torch.float32)
    with pytest.raises(ValueError, match=r"key needs at least one memory slot \(T >= 1\)"):
        ops.memory_read(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 0), torch.randn(1, 4, 0),
                        impl=backend)
    with pytest.raises(ValueError, match=r"regions needs at least one region \(H\*W >= 1\)"):
        ops.word_region_similarity(torch.randn(2, 8, 0, 3), torch.randn(2, 8, 4), [1, 2],
                                   impl=backend)
    with pytest.raises(ValueError, match=r"words needs at least one word slot \(T >= 1\)"):
        ops.word_region_attention(torch.randn(2, 8, 0), torch.randn(2, 8, 2, 2), 4.0,
                                  impl=backend)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_synchronisation_in_a_generator_and_damsm_step():
    """A generator step and the DAMSM losses through the ITM, forward and backward, make no
    host-device synchronisation (torch raises on one in sync-debug mode 'error')."""
    from t2i_fast.models import build_models, get_config
    from t2i_fast.models.build import text_features
    cfg = get_config("tiny")
    models = build_models(cfg, device="cuda")
    batch = 4
    gen = torch.Generator().manual_seed(0)
    tokens = torch.zeros(batch, cfg.clip_context, dtype=torch.long)
    for row, length in enumerate((cfg.words_num, cfg.words_num - 1, 2, 1)):
        tokens[row, 0] = cfg.vocab_size - 2                                  # start of text
        tokens[row, 1:length + 1] = torch.randint(1, cfg.vocab_size - 2, (length,), generator=gen)
        tokens[row, length + 1] = cfg.vocab_size - 1                         # end of text
    tokens = tokens.cuda()
    noise = torch.randn(batch, cfg.z_dim, generator=gen).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        words, sent, mask, lens = text_features(models, tokens)
        images = models.generator(noise, sent, words, mask)[0]
        regions, code = models.image_encoder.encode_image(images[-1])
        loss = sum(ops.damsm_word_loss(regions, words, lens)) + \
            sum(ops.damsm_sentence_loss(code, sent))
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ---- the lean import and python -m t2i_fast.info -----------------------------------------

def test_import_is_lean():
    """import t2i_fast(.ops) initialises no CUDA, imports no Triton, loads no extension."""
    code = ("import sys, torch, t2i_fast, t2i_fast.ops\n"
            "assert 'triton' not in sys.modules, 'triton imported'\n"
            "assert 't2i_fast._C' not in sys.modules, 'extension loaded'\n"
            "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_info_lists_every_backend_with_its_limits_and_every_op_in_auto_order():
    out = subprocess.run([sys.executable, "-m", "t2i_fast.info"], check=True,
                         capture_output=True, text=True).stdout
    assert "torch " in out and "triton " in out and "extension t2i_fast._C" in out
    for name, record in backends.TABLE.items():
        assert f"  {name:9s} {record.reached}" in out
    assert "limits   word-region ops: |gamma1| <= 80" in out
    for op in backends.KERNELS:
        section = out.split("\n" + op + "\n", 1)[1]
        for device in backends.DEVICES:
            for rank, name in enumerate(backends.auto_order(op, device), 1):
                assert f"  {device:4s} {name:9s} auto {rank}" in section
            for name in set(backends.BACKENDS) - set(backends.auto_order(op, device)):
                assert f"  {device:4s} {name:9s} explicit" in section
