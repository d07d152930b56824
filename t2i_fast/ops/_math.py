"""Small pieces of reference math shared by the ops' reference implementations."""
import torch


def safe_softmax(scores, pad, dim):
    """Softmax of `scores` over `dim`, leaving out entries where `pad` (broadcastable) is True.

    A slice with every entry left out gives all zeros, not NaN (the convention of SDPA since
    PyTorch 2.5).
    """
    if pad is not None:
        scores = scores.masked_fill(pad, float("-inf"))
    peak = scores.amax(dim, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak)).detach()
    e = torch.exp(scores - peak)
    total = e.sum(dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def cosine(x, y, dim, eps=1e-8):
    """x.y / max(|x||y|, eps), the form of the upstream `cosine_similarity` helper."""
    return (x * y).sum(dim) / (x.norm(dim=dim) * y.norm(dim=dim)).clamp(min=eps)
