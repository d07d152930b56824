"""Device-independent memory accounting used by the tests and benchmarks."""
import torch


def saved_bytes(fn, *args, **kwargs):
    """Bytes autograd saves for backward while running fn(*args, **kwargs).

    Counts every tensor packed by `torch.autograd.graph.saved_tensors_hooks`, inputs included,
    so the figure is comparable across implementations of the same function.
    """
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return total
