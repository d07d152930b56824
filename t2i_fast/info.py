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
    lines.append("backends:")
    for record in backends.TABLE.values():
        dtypes = "; ".join(f"{device}: " + ", ".join(str(d).replace("torch.", "")
                                                    for d in kinds)
                           for device, kinds in record.dtypes.items())
        lines += [f"  {record.name:9s} {record.reached}",
                  f"            dtypes   {dtypes}",
                  f"            limits   {record.limit_text()}"]
    lines += ["", "ops on float32 tensors. 'auto N': the N-th backend that auto tries; 'explicit': "
              "runs only when named (for CUDA tensors: until a committed GPU record validates "
              "it, t2i_fast/validation.json)."]
    for op in backends.KERNELS:
        lines.append(op)
        for device in backends.DEVICES:
            order = backends.auto_order(op, device)
            rest = [name for name in backends.BACKENDS if name not in order]
            for name in list(order) + rest:
                reasons = backends.unavailable(name, op, device, torch.float32)
                state = "available" if not reasons else "unavailable: " + "; ".join(reasons)
                rank = f"auto {order.index(name) + 1}" if name in order else "explicit"
                lines.append(f"  {device:4s} {name:9s} {rank:8s} {state}")
    lines.append("damsm_word_loss: uses word_region_similarity; damsm_sentence_loss: torch ops")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from t2i_fast.errors import cli_main
    sys.exit(cli_main(lambda argv: print(report())))
