"""The GPU check's plumbing on CPU: the record that benchmarks/record.py assembles from a
benchmark JSON and the tests' validation counts, the auto order benchmarks/validation.py derives
from it, and benchmarks/gpu_check.sh's behaviour without a GPU."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                  ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _case(op, provider, ms, dtype="float32", mode="fwdbwd", record_timing=True):
    role = "fast" if provider in ("triton", "cuda") else "reference"
    return {"name": f"test_{op}[{provider}-{dtype}-{mode}]", "stats": {"median": 2 * ms / 1e3},
            "extra_info": {"op": op, "shape": [2, 3], "dtype": dtype, "mode": mode,
                           "provider": provider, "role": role, "device": "cuda",
                           "device_ms": ms, "time_ms": ms, "record_timing": record_timing}}


def _write(path, content):
    path.write_text(json.dumps(content))
    return str(path)


def _assemble(tmp_path, tests, steps):
    """Runs record.py's command line as gpu_check.sh does; returns (record, bench)."""
    record = _module("record")
    ops_json = _write(tmp_path / "ops.json", {"benchmarks": [
        _case("memory_read", "cuda", 1.0), _case("memory_read", "triton", 2.0),
        _case("memory_read", "reference", 9.0, record_timing=False),
        _case("memory_read", "cuda", 5.0, dtype="bfloat16", record_timing=False),
        _case("word_region_similarity", "triton", 3.0),
        _case("word_region_similarity", "cuda", 1.5),
        _case("word_region_similarity", "cuda", 0.5, mode="fwd", record_timing=False)]})
    model_json = _write(tmp_path / "model.json", {"benchmarks": [
        {"name": "test_generator_step[eager]", "stats": {"median": 0.07},
         "extra_info": {"provider": "eager"}}]})
    tests_json = _write(tmp_path / "tests.json", tests)
    steps_tsv = tmp_path / "steps.tsv"
    steps_tsv.write_text("".join(f"{name}\t{rc}\t{seconds}\t{note}\n"
                                 for name, rc, seconds, note in steps))
    out = tmp_path / "out"
    out.mkdir()
    assert record.main(["--out-dir", str(out), "--tests", tests_json, "--steps", str(steps_tsv),
                        "--commit", "abc123", "--bench", ops_json, model_json,
                        str(tmp_path / "missing.json")]) == 0
    return (json.loads((out / "record.json").read_text()),
            json.loads((out / "bench.json").read_text()))


PASS, FAIL = {"passed": 4, "failed": 0, "skipped": 1}, {"passed": 3, "failed": 1, "skipped": 0}
TESTS = {"triton": {"memory_read": PASS, "word_region_similarity": PASS},
         "cuda": {"memory_read": PASS, "word_region_similarity": FAIL}}


def test_record_from_fake_outputs_and_the_order_validation_derives(tmp_path, monkeypatch):
    rec, bench = _assemble(tmp_path, TESTS, [("tests", 1, 120, ""), ("bench-ops", 0, 90, "")])
    assert len(bench["benchmarks"]) == 8  # both files merged, the missing one left out
    for key in ("device", "versions", "date", "commit", "tests", "timings_ms"):
        assert key in rec
    assert rec["commit"] == "abc123" and rec["tests"] == TESTS
    assert rec["timings_ms"] == {"memory_read": {"cuda": 1.0, "triton": 2.0},
                                 "word_region_similarity": {"triton": 3.0, "cuda": 1.5}}
    assert rec["steps"]["tests"] == {"rc": 1, "seconds": 120, "note": ""}
    table = _module("report").render(bench)
    assert "| 2x3 | float32 | fwdbwd | cuda | 1.000 | 9.00 |" in table  # 9 ms eager / 1 ms
    assert "`test_generator_step[eager]`: provider eager" in table

    validation = _module("validation")
    results = tmp_path / "benchmarks" / "results" / "2030-01-01-gpu"
    results.mkdir(parents=True)
    (results / "record.json").write_text(json.dumps(rec))
    monkeypatch.setattr(validation, "ROOT", tmp_path)
    order = validation.derive(validation.load_records(tmp_path / "benchmarks" / "results"))
    order = order["auto_order_cuda"]
    assert order["memory_read"] == ["cuda", "triton"]        # both passed; cuda timed faster
    assert order["word_region_similarity"] == ["triton"]     # a cuda test failed
    assert order["dynamic_memory"] == ["triton"]             # untouched: the earlier evidence


def test_counts_of_a_test_run_cut_short_validate_nothing(tmp_path):
    rec, _ = _assemble(tmp_path, TESTS, [("tests", 124, 240, "timed out after 240s")])
    assert rec["tests"] == {} and rec["tests_incomplete"] == TESTS
    again = tmp_path / "again"
    again.mkdir()
    rec, _ = _assemble(again, TESTS, [])
    assert rec["tests"] == {}  # no tests step recorded at all


def test_results_dir_names_the_date_and_the_gpu():
    record = _module("record")
    assert record.results_dir({"date": "2030-01-02", "device": "NVIDIA H200"}) == \
        "benchmarks/results/2030-01-02-h200"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the script needs bash and coreutils")
def test_gpu_check_without_a_gpu_fails_at_the_first_gpu_step_and_writes_its_files(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PY=sys.executable, COMMIT="abc123",
               CUDA_VISIBLE_DEVICES="", GPU_CHECK_SECONDS="120")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    log = (tmp_path / "build.log").read_text()
    assert "torch sees no CUDA device" in log
    assert "!! build failed (exit -1: not run: needs a CUDA device" in log
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["commit"] == "abc123" and rec["tests"] == {} and rec["timings_ms"] == {}
    assert rec["steps"]["device"]["rc"] != 0 and rec["steps"]["info"]["rc"] == 0
    assert rec["steps"]["tests"]["note"].startswith("not run: needs a CUDA device")
    assert len(list(tmp_path.iterdir())) <= 8
