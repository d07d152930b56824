"""A non-editable install carries the extension and t2i_fast.kernels (the kernels/ folder)."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_wheel_installs_kernels_subpackage_and_extension(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.so", "__pycache__", "*.egg-info", ".benchmarks", "runs"))
    env = dict(os.environ, T2I_FAST_CUDA="0", MAX_JOBS="2")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation",
                    "--no-deps", "-w", str(tmp_path / "dist"), str(src)], check=True, env=env)
    (wheel,) = (tmp_path / "dist").glob("t2i_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "t2i_fast/kernels/__init__.py" in names
    assert any(n.startswith("t2i_fast/_C") and n.endswith(".so") for n in names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True)
    code = ("import t2i_fast, t2i_fast.kernels, t2i_fast._ext as e; "
            f"assert t2i_fast.__file__.startswith({str(site)!r}), t2i_fast.__file__; "
            "assert t2i_fast.kernels.__file__.endswith('t2i_fast/kernels/__init__.py'); "
            "assert e.load()[0] is not None, e.load()[1]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path,
                   env=dict(os.environ, PYTHONPATH=str(site)))
