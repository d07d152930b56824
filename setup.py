"""Builds t2i_fast._C: the C++ CPU kernels always, the CUDA kernels when asked or possible.

T2I_FAST_CUDA=1 forces the CUDA build, 0 skips it, auto (default) builds it when torch is a CUDA
build and nvcc is found. Install torch first, then `pip install -e . --no-build-isolation`.
"""
import glob
import os
import shutil
import site
import sys

from setuptools import find_packages, setup
from torch.utils import cpp_extension


def cuda_home():
    """The real toolkit directory: the `nvcc` on PATH may be a wrapper script."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with open(nvcc, "rb") as f:
        head = f.read(512)
    if head.startswith(b"#!"):  # a wrapper: find the nvcc it runs
        for word in head.decode(errors="ignore").split():
            if word.endswith("/bin/nvcc") and os.path.exists(word):
                nvcc = word
                break
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def want_cuda():
    mode = os.environ.get("T2I_FAST_CUDA", "auto").lower()
    if mode not in ("0", "1", "auto"):
        sys.exit(f"T2I_FAST_CUDA must be 0, 1 or auto, got {mode!r}")
    possible = cpp_extension.torch.version.cuda is not None and cuda_home() is not None
    if mode == "1" and not possible:
        sys.exit("T2I_FAST_CUDA=1 but torch is not a CUDA build or nvcc was not found")
    return mode == "1" or (mode == "auto" and possible)


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp"]  # torch adds its own -std
    if not want_cuda():
        return cpp_extension.CppExtension(
            "t2i_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    os.environ["CUDA_HOME"] = cpp_extension.CUDA_HOME = cuda_home()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # torch's detection fails without a GPU
    # The toolkit may lack the cuBLAS/cuSPARSE headers that ATen's CUDA headers include; torch's
    # own nvidia wheels ship them.
    extra = [arg for s in site.getsitepackages()
             for p in glob.glob(os.path.join(s, "nvidia", "cu[0-9]*", "include"))
             for arg in ("-isystem", p)]
    sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
    return cpp_extension.CUDAExtension(
        "t2i_fast._C", sources, define_macros=[("T2I_FAST_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx + extra,
                            "nvcc": ["-O3", "-lineinfo",
                                     "-diag-suppress", "3189"] + extra},
        extra_link_args=["-fopenmp"])


setup(
    packages=find_packages(include=["t2i_fast", "t2i_fast.*"]) + ["t2i_fast.kernels"],
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
