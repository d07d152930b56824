"""The recorder of tests/conftest.py (`pytest --validation-json PATH`), run on a small suite in a
pytest subprocess with conftest's device_for patched to put every backend but cpu on CUDA:
nothing is recorded for the tests on CPU, the others' counts go under their backend and op."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

SUITE = {
    "test_one_op.py": '''
import pytest
import conftest

conftest.device_for = DEVICE_FOR

OP = "memory_read"
BACKENDS = ["cpu", "triton", "cuda"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_passes(backend):
    pass


@pytest.mark.parametrize("backend", BACKENDS)
def test_fails_off_cpu(backend):
    assert backend == "cpu"


@pytest.mark.parametrize("backend", BACKENDS)
def test_skips_in_the_test(backend):
    pytest.skip("not here")


@pytest.mark.skipif(True, reason="skipped at set-up")
@pytest.mark.parametrize("backend", BACKENDS)
def test_skips_at_setup(backend):
    pass


@pytest.fixture
def broken():
    raise RuntimeError("set-up error")


@pytest.mark.parametrize("backend", ["cuda"])
def test_errors_at_setup(backend, broken):
    pass


def test_without_backend():
    pass
''',
    "test_op_parameter.py": '''
import pytest

OPS = ("word_region_attention", "word_region_similarity")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["cuda"])
def test_by_op(backend, op):
    assert op == "word_region_attention"
''',
    "test_no_op.py": '''
import pytest


@pytest.mark.parametrize("backend", ["cuda"])
def test_of_no_op(backend):
    pass
''',
}


def run_suite(tmp_path, device_for):
    """Runs SUITE with conftest.device_for = `device_for` (source text); the recorded JSON."""
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    for name, text in SUITE.items():
        (tmp_path / name).write_text(f"DEVICE_FOR = {device_for}\n" + text)
    out = tmp_path / "validation.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--validation-json={out}", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the suite has failing tests
    return json.loads(out.read_text())


def test_records_the_tests_on_a_cuda_device_by_backend_and_op(tmp_path):
    """The cpu backend's tests (passed, skipped) leave no trace; the others' counts land under
    their backend and op, set-up errors as failures, set-up skips as skips."""
    recorded = run_suite(tmp_path, 'lambda backend: "cpu" if backend == "cpu" else "cuda"')
    assert recorded == {
        "triton": {"memory_read": {"passed": 1, "failed": 1, "skipped": 2}},
        "cuda": {"memory_read": {"passed": 1, "failed": 2, "skipped": 2},
                 "word_region_attention": {"passed": 1, "failed": 0, "skipped": 0},
                 "word_region_similarity": {"passed": 0, "failed": 1, "skipped": 0}},
    }
