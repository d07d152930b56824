"""Device-independent memory accounting used by the tests and benchmarks."""
import torch


def saved_bytes(fn, *args, exclude=(), **kwargs):
    """Bytes autograd saves for backward while running fn(*args, **kwargs).

    Counts every tensor packed by `torch.autograd.graph.saved_tensors_hooks`, inputs included,
    so the figure is comparable across implementations of the same function. Tensors whose
    storage is one of `exclude`'s (e.g. the parameters, which live anyway) are not counted.
    """
    total = 0
    excluded = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t):
        nonlocal total
        if t.untyped_storage().data_ptr() not in excluded:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return total
