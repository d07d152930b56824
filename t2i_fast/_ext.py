"""Loading of the compiled extension t2i_fast._C, in one place.

The extension registers its kernels under `torch.ops.t2i_fast_C`. It is loaded lazily and at most
once; a failure is remembered with a message that says how to fix it.
"""
import functools

import torch

NAMESPACE = "t2i_fast_C"


@functools.lru_cache(maxsize=None)
def load():
    """Return (module, None) when t2i_fast._C is usable, else (None, reason)."""
    running = torch.__version__.split("+")[0]
    try:
        from t2i_fast import _C
    except ImportError as err:
        return None, (f"t2i_fast._C could not be loaded ({err}); it must be built against the "
                      f"running torch {running}: pip install -e . --no-build-isolation")
    built = _C.build_info()["torch_version"]
    if built != running:
        return None, (f"t2i_fast._C was built for torch {built}, running {running}: rebuild with "
                      f"pip install -e . --no-build-isolation")
    return _C, None


def build_info():
    """The extension's build facts, or {'error': reason}."""
    module, reason = load()
    return dict(module.build_info()) if module else {"error": reason}


def has_kernel(op, dispatch_key):
    """Whether torch.ops.t2i_fast_C.<op> has a kernel for dispatch_key ('CPU' or 'CUDA')."""
    module, _ = load()
    return module is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"{NAMESPACE}::{op}", dispatch_key)


def op(name):
    """The OpOverloadPacket torch.ops.t2i_fast_C.<name> (the extension must be loaded)."""
    module, reason = load()
    if module is None:
        raise RuntimeError(reason)
    return getattr(getattr(torch.ops, NAMESPACE), name)
