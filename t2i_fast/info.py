"""python -m t2i_fast.info: versions, the extension build, and every op x backend."""
import importlib.metadata
import os
import platform

import torch

import t2i_fast
from t2i_fast import _ext, backends


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report():
    cuda = torch.cuda.is_available()
    lines = [
        f"t2i_fast {t2i_fast.__version__}  (python {platform.python_version()})",
        f"torch {torch.__version__}  (CUDA build {torch.version.cuda or 'no'}; "
        f"GPU {torch.cuda.get_device_name(0) if cuda else 'none visible'})",
        f"triton {_version('triton')}  (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')})",
        f"extension t2i_fast._C: {_ext.build_info()}",
        f"backend requested: {backends.requested()}",
        "",
    ]
    devices = ["cpu", "cuda"]
    for op in backends.KERNELS:
        lines.append(op)
        for device in devices:
            for name in backends.BACKENDS:
                reasons = backends.unavailable(name, op, device, torch.float32)
                state = "available" if not reasons else "unavailable: " + "; ".join(reasons)
                lines.append(f"  {device:4s} {name:9s} {state}")
    lines.append("damsm_word_loss: uses word_region_similarity; damsm_sentence_loss: torch ops")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
