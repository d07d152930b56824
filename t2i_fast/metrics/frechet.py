"""Gaussian statistics of feature sets and the Fréchet distance between two Gaussians.

    mu, sigma = gaussian_stats(features)                  # (N, D) -> (D,), (D, D), float64
    d = frechet_distance(mu1, sigma1, mu2, sigma2)        # float >= 0
    save_stats("real.npz", mu, sigma); mu, sigma = load_stats("real.npz")

FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)). The usual code (pytorch-fid, DM-GAN's and
GR-GAN's copies) takes scipy's `sqrtm` of the non-symmetric product S1 S2 and falls back to adding
1e-6 to the diagonals when that fails. Here the trace term uses the identity
Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2): both factors are symmetric positive
semi-definite, so two symmetric eigen-decompositions give it without complex intermediates.
Eigenvalues within rounding of zero (below D * eps * the largest) are set to 0, so singular
covariances (fewer samples than dimensions) need no offset and stay accurate. Without the offset a
rank-deficient case can differ from the eps-fallback value of the usual code by about
1e-6 * Tr(...) terms; full-rank cases agree to rounding.

The .npz files use the keys `mu` and `sigma`, like pytorch-fid's and GR-GAN's shipped stats.
"""
import os
import zipfile

import numpy as np

from t2i_fast.fileio import atomic_write


def to_float64(x, what, ndim=None):
    """A float64 numpy copy of an array or tensor `x`; `what` names it in errors."""
    if hasattr(x, "detach"):                                   # torch.Tensor, any device
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{what}: expected a {ndim}-D array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return x


def gaussian_stats(features):
    """features (N, D), N >= 2 -> mu (D,), sigma (D, D): the mean and the unbiased covariance
    (np.cov(features, rowvar=False)), in float64."""
    x = to_float64(features, "gaussian_stats features", ndim=2)
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"gaussian_stats features: need at least 2 rows and 1 column to "
                         f"estimate a covariance, got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def check_stats(mu, sigma, what):
    """(mu (D,), sigma (D, D)) as float64 arrays, or a ValueError naming `what`."""
    mu = to_float64(mu, f"{what} mu", ndim=1)
    sigma = to_float64(sigma, f"{what} sigma", ndim=2)
    d = mu.shape[0]
    if d < 1 or sigma.shape != (d, d):
        raise ValueError(f"{what}: expected mu (D,) and sigma (D, D), got mu {mu.shape} and "
                         f"sigma {sigma.shape}")
    return mu, sigma


def _clip_rounding(w):
    """Eigenvalues below D * eps * max|w| (rounding, in either sign) set to 0. Their square
    roots would otherwise add ~sqrt(eps) * scale per null direction of a singular covariance."""
    cutoff = w.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(w).max()), 0.0)
    return np.where(w > cutoff, w, 0.0)


def _psd_sqrt(sym):
    """The square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh(sym)
    return (v * np.sqrt(_clip_rounding(w))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): mu (D,), sigma (D, D)
    (symmetric positive semi-definite; the symmetric part is used). Returns a float >= 0."""
    mu1, sigma1 = check_stats(mu1, sigma1, "frechet_distance first")
    mu2, sigma2 = check_stats(mu2, sigma2, "frechet_distance second")
    if mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: dimensions differ, {mu1.shape[0]} vs "
                         f"{mu2.shape[0]}")
    s1 = 0.5 * (sigma1 + sigma1.T)
    s2 = 0.5 * (sigma2 + sigma2.T)
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    tr_sqrt = np.sqrt(_clip_rounding(eig)).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt
    return float(max(fd, 0.0))      # the exact value is >= 0; only rounding can go below


def save_stats(path, mu, sigma):
    """Write mu (D,) and sigma (D, D) to the .npz file `path` atomically (a temporary file in
    the same folder, then a rename), so a crash never leaves a half-written file."""
    mu, sigma = check_stats(mu, sigma, f"save_stats {path}")
    atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma))


def load_stats(path):
    """(mu (D,), sigma (D, D)) float64 from the .npz file `path` (keys `mu` and `sigma`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"statistics file {path!r} does not exist; expected an .npz "
                                f"with arrays 'mu' (D,) and 'sigma' (D, D)")
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError("it holds a single array, not an .npz archive")
        with data:
            missing = [k for k in ("mu", "sigma") if k not in data.files]
            if missing:
                raise KeyError(f"missing key(s) {missing}; found {sorted(data.files)}")
            mu, sigma = data["mu"], data["sigma"]
    except KeyError as err:
        raise ValueError(f"statistics file {path!r}: {err.args[0]}; expected arrays 'mu' (D,) "
                         f"and 'sigma' (D, D)") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"statistics file {path!r} is not a readable .npz archive with arrays "
                         f"'mu' and 'sigma' ({err})") from err
    return check_stats(mu, sigma, f"statistics file {path!r}")


def resolve_stats(stats, what):
    """`stats` as (mu, sigma): a pair (mu, sigma) or the path of an .npz written by
    `save_stats` (or by pytorch-fid / GR-GAN)."""
    if isinstance(stats, (str, os.PathLike)):
        return load_stats(stats)
    if isinstance(stats, (tuple, list)) and len(stats) == 2:
        return check_stats(stats[0], stats[1], what)
    raise TypeError(f"{what}: expected (mu, sigma) or the path of an .npz file, "
                    f"got {type(stats).__name__}")
