"""Shared test set-up: the Triton interpreter on GPU-less machines, which backend runs where,
the suite's one tolerance rule, input makers, and the GPU validation recorder.

`pytest --validation-json PATH` writes, after the session, {backend: {op: {"passed": n,
"failed": n, "skipped": n}}} over the tests that ran on a CUDA device: a test counts when its
`backend` parameter runs on CUDA (`device_for`), under its module's `OP` (or, in a module that
sets `OPS`, under its `op` parameter). benchmarks/gpu_check.sh turns it into the GPU record.
"""
import json
import os

import torch

if not torch.cuda.is_available():  # must precede the first @triton.jit
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from t2i_fast import backends  # noqa: E402

# The backends with kernels of their own, in the table's order; the reference is what they
# are tested against.
FAST_BACKENDS = tuple(name for name, record in backends.TABLE.items() if record.kernel is not None)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Relative-norm error allowed against a float64 reference, the one table of the suite. float64
# must agree to rounding; other dtypes follow the flash-attention rule: at most 2x the error of
# PyTorch's own computation in that dtype (the reference run on the same inputs), and never less
# than the table's value (float32: the SPEC's 1e-5; reductions with cancellation, like the
# gate-bias gradient, have a larger eager error and get the 2x rule).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LOWP_FACTOR = 2.0


# --------------------------------------------------------------------------------------------
# Which backend runs where, and the tests every op's file runs
# --------------------------------------------------------------------------------------------

def device_for(backend):
    return "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) \
        else "cpu"


def require(backend, op, dtype):
    """Skip unless `backend` runs `op` on its device with `dtype`; returns the device."""
    device = device_for(backend)
    reasons = backends.unavailable(backend, op, device, dtype)
    if reasons:
        pytest.skip(f"{backend} {op} {dtype}: " + "; ".join(reasons))
    return device


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def backend_dtypes(device_type=None, dtypes=DTYPES):
    """Parameters `backend, dtype`: every fast backend with every dtype of `dtypes` the table
    lists for it (on `device_type`, or on any device). `require` skips those this machine cannot
    run."""
    params = []
    for backend in FAST_BACKENDS:
        listed = backends.TABLE[backend].dtypes
        devices = [device_type] if device_type else list(listed)
        for dtype in dtypes:
            if any(dtype in listed.get(device, ()) for device in devices):
                params.append(pytest.param(backend, dtype, id=f"{backend}-{dtype_name(dtype)}"))
    return params


def op_matrix(op, check, cases, blocking, full_sizes, blocking_dtypes=DTYPES):
    """The three backend x dtype tests of an op's file, each calling
    `check(op, case, backend, dtype, device)`: the small `cases` on every backend and dtype, the
    `blocking` cases (sized for compiled kernels) in `blocking_dtypes`, and on a GPU the
    `full_sizes`. Assign them to test_* names of the module, which sets OP."""
    @pytest.mark.parametrize("case", cases, ids=str)
    @pytest.mark.parametrize("backend,dtype", backend_dtypes())
    def test_matches_reference(backend, dtype, case):
        check(op, case, backend, dtype, require(backend, op, dtype))

    @pytest.mark.parametrize("case", blocking, ids=str)
    @pytest.mark.parametrize("backend,dtype", backend_dtypes(dtypes=blocking_dtypes))
    def test_blocking_matches_reference(backend, dtype, case):
        device = require(backend, op, dtype)
        if backend == "triton" and device == "cpu":
            pytest.skip("sized for compiled kernels; the Triton interpreter runs the small cases")
        check(op, case, backend, dtype, device)

    @pytest.mark.gpu
    @pytest.mark.parametrize("case", full_sizes, ids=str)
    @pytest.mark.parametrize("backend,dtype", backend_dtypes("cuda"))
    def test_full_size(backend, dtype, case):
        check(op, case, backend, dtype, require(backend, op, dtype))

    return test_matches_reference, test_blocking_matches_reference, test_full_size


def assert_same_every_run(run, threads=(None, None, None)):
    """`run()` returns a dict of tensors; every call (under its CPU thread count in `threads`,
    None: as set) must give bitwise the same."""
    before = torch.get_num_threads()
    try:
        results = []
        for n in threads:
            torch.set_num_threads(n or before)
            results.append(run())
    finally:
        torch.set_num_threads(before)
    for again in results[1:]:
        for name, value in results[0].items():
            assert torch.equal(value, again[name]), name


def pytest_collection_modifyitems(items):
    # Under the Triton interpreter a test takes about a second: they are left out of the fast
    # subset (-m "not slow"); the full suite runs them.
    for item in items:
        backend = getattr(getattr(item, "callspec", None), "params", {}).get("backend")
        if backend == "triton" and device_for(backend) == "cpu":
            item.add_marker(pytest.mark.slow)


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("a full-size GPU test: needs a CUDA device")


@pytest.fixture
def poisoned():
    """Memory from torch.empty (in Python and in the C++ kernels) starts as NaN, so an output
    element a kernel forgot to write fails the comparison."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


# --------------------------------------------------------------------------------------------
# The tolerance rule
# --------------------------------------------------------------------------------------------

def rel_err(actual, expected, scale=None):
    """||actual - expected|| / ||expected||; against `scale` instead where expected is zero
    (a gradient that vanishes in exact arithmetic is measured on the call's scale)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    norm = float(expected.norm())
    if norm == 0.0 and scale is not None:
        norm = scale
    return float((actual - expected).norm()) / max(norm, 1e-30)


def tolerance(dtype, expected, same_dtype_ref=None, scale=None):
    """The relative-norm error allowed for a result in `dtype` against the float64 `expected`;
    `same_dtype_ref` is PyTorch's result in `dtype` (required unless dtype is float64)."""
    if dtype == torch.float64:
        return TOL[dtype]
    return max(TOL[dtype], LOWP_FACTOR * rel_err(same_dtype_ref, expected, scale))


def assert_close(actual, expected, dtype, same_dtype_ref=None, what="", scale=None):
    """`actual` against the float64 `expected` under the rule of `tolerance`. Infinite entries
    of `expected` (a log-sum-exp over nothing) must be matched exactly; `scale`: see rel_err."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    finite = torch.isfinite(expected)
    assert torch.equal(actual[~finite], expected[~finite]), f"{what}: infinite entries differ"
    assert torch.isfinite(actual[finite]).all(), f"{what}: non-finite values"
    if not finite.all():
        actual, expected = actual[finite], expected[finite]
        same_dtype_ref = None if same_dtype_ref is None else \
            same_dtype_ref.detach().double().cpu()[finite]
    err, bound = rel_err(actual, expected, scale), tolerance(dtype, expected, same_dtype_ref, scale)
    assert err <= bound, f"{what}: rel err {err:.3g} > {bound:.3g} ({dtype})"


def named(outs, grads):
    """A call's outputs (a sequence) and input gradients (a dict) as one dict of tensors."""
    results = {f"output {i}": o for i, o in enumerate(outs)}
    results.update({f"grad {k}": g for k, g in grads.items()})
    return results


def assert_all_close(actual, exact, native, dtype, what):
    """Every tensor of the dict `actual` against the float64 one of `exact` under the rule,
    `native` holding PyTorch's results in `dtype`; an expectation that vanishes is measured on
    the largest of `exact`."""
    scale = max(float(t.norm()) for t in exact.values())
    for name, expected in exact.items():
        assert actual[name].dtype == dtype, f"{what} {name}: dtype {actual[name].dtype}"
        assert_close(actual[name], expected, dtype, native[name], f"{what} {name}", scale)


def statistic_dtype(dtype):
    """The precision a float32 statistic (a kernel's log-sum-exp) of `dtype` inputs is held to:
    float32, or the inputs' lower precision."""
    return dtype if dtype.itemsize < 4 else torch.float32


# --------------------------------------------------------------------------------------------
# Input makers
# --------------------------------------------------------------------------------------------

def cast_floats(args, dtype):
    """The dict `args` with its floating tensors in `dtype` (other entries as they are)."""
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in args.items()}


def padding_mask(lengths, slots, device="cpu"):
    lens = torch.as_tensor(lengths, device=device)
    return torch.arange(slots, device=device)[None, :] >= lens[:, None]


# --------------------------------------------------------------------------------------------
# The GPU validation recorder (--validation-json)
# --------------------------------------------------------------------------------------------

OUTCOMES = ("passed", "failed", "skipped")
_outcomes = pytest.StashKey[dict]()


def pytest_addoption(parser):
    parser.addoption("--validation-json", metavar="PATH", default=None,
                     help="write the pass/fail/skip counts of the tests that ran on a CUDA "
                          "device, by backend and op, to PATH")


def pytest_configure(config):
    config.stash[_outcomes] = {}


def validation_key(item):
    """(backend, op) of a test that runs on a CUDA device, else None."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    backend = params.get("backend")
    if backend is None or device_for(backend) != "cuda":
        return None
    op = params.get("op") if hasattr(item.module, "OPS") else getattr(item.module, "OP", None)
    return None if op is None else (backend, op)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    key = validation_key(item)
    if key is not None:
        # A test's outcome: failed if any phase failed, else skipped if a phase skipped.
        outcomes = item.config.stash[_outcomes]
        _, outcome = outcomes.get(item.nodeid, (key, "passed"))
        if outcome != "failed" and (report.failed or report.skipped):
            outcome = "failed" if report.failed else "skipped"
        outcomes[item.nodeid] = (key, outcome)
    return report


def pytest_sessionfinish(session):
    path = session.config.getoption("--validation-json")
    if path is None:
        return
    counts = {}
    for (backend, op), outcome in session.config.stash[_outcomes].values():
        per_op = counts.setdefault(backend, {}).setdefault(op, dict.fromkeys(OUTCOMES, 0))
        per_op[outcome] += 1
    with open(path, "w") as f:
        json.dump(counts, f, indent=2, sort_keys=True)
        f.write("\n")
