"""t2i_fast: fused kernels for attention- and memory-based text-to-image GANs.

Importing the package is cheap: it loads torch and nothing else. The C++ extension is loaded on
first use of a C++ backend, Triton only when the Triton backend runs, and CUDA is never initialised
here. The ops live in `t2i_fast.ops`.
"""
import torch  # noqa: F401  (the extension links against libtorch: torch must load first)

__version__ = "0.1.0"
__all__ = ["__version__"]
