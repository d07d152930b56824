"""R-precision as DM-GAN computes it (reference §1.11, §2.5), and its mismatched-caption draw.

    mis = sample_mismatched(class_ids, num=99, generator=0)        # (N, 99) caption indices
    mean, std = r_precision(image_codes, sentence_embs, sentence_embs_of[mis], folds=10)

Per generated image: its global image code against 100 candidate sentences (its own caption
first, then 99 captions of images with another class id), scored by cosine similarity. It is a
hit when the own caption ranks first (R = 1); as with torch.argmax, a tie goes to the own
caption. The hits are shuffled and cut into `folds` folds of size N // folds; DM-GAN slices
fold i as hits[i*size : (i+1)*size - 1], so the LAST hit of every fold is left out of that
fold's mean (30,000 trials: 10 means over 2,999 each). That slice is kept here so the numbers
are comparable. Trials beyond folds * size are unused. Returns the mean and np.std (ddof 0)
of the fold means.

Cosine: dot / max(|code| |sentence|, 1e-8), as DM-GAN's `scores / norm.clamp(min=1e-8)`.
"""
import numpy as np

from t2i_fast.metrics.frechet import to_float64


def _rng(generator):
    """np.random.Generator from a Generator, a seed or None."""
    return generator if isinstance(generator, np.random.Generator) \
        else np.random.default_rng(generator)


def retrieval_hits(image_codes, sentence_embs, mismatched_embs, chunk=1024):
    """image_codes (N, D), sentence_embs (N, D), mismatched_embs (N, M, D) -> hits (N,) bool:
    True where the own sentence has the highest cosine similarity (ties count as hits).
    Tensors or arrays; evaluated `chunk` rows at a time in float64."""
    n, n_own, n_mis = len(image_codes), len(sentence_embs), len(mismatched_embs)
    if n == 0:
        raise ValueError("retrieval_hits: no trials (image_codes has 0 rows)")
    if not n == n_own == n_mis:
        raise ValueError(f"retrieval_hits: image_codes, sentence_embs and mismatched_embs must "
                         f"have the same number of rows, got {n}, {n_own} and {n_mis}")
    hits = np.empty(n, dtype=bool)
    for lo in range(0, n, chunk):
        code = to_float64(image_codes[lo:lo + chunk], "retrieval_hits image_codes", ndim=2)
        own = to_float64(sentence_embs[lo:lo + chunk], "retrieval_hits sentence_embs", ndim=2)
        mis = to_float64(mismatched_embs[lo:lo + chunk], "retrieval_hits mismatched_embs",
                         ndim=3)
        b, d = code.shape
        if own.shape != (b, d) or mis.shape[0] != b or mis.shape[2] != d or mis.shape[1] < 1:
            raise ValueError(f"retrieval_hits: expected image_codes (N, D), sentence_embs (N, D) "
                             f"and mismatched_embs (N, M>=1, D) with the same D; got "
                             f"{code.shape}, {own.shape}, {mis.shape} (rows {lo}..)")
        cands = np.concatenate([own[:, None, :], mis], axis=1)                  # (b, 1+M, D)
        dots = np.einsum("bd,bkd->bk", code, cands)
        norms = np.linalg.norm(code, axis=1)[:, None] * np.linalg.norm(cands, axis=2)
        cos = dots / np.maximum(norms, 1e-8)
        hits[lo:lo + b] = cos.argmax(axis=1) == 0                               # first max wins
    return hits


def fold_scores(hits, folds=10, generator=None, shuffle=True):
    """hits (N,) -> (mean, std) over `folds` fold means, DM-GAN's slicing (module docstring).
    generator: np.random.Generator, seed or None, used to shuffle the hits first."""
    r = np.asarray(hits, dtype=np.float64).reshape(-1)
    size = r.shape[0] // folds if folds >= 1 else 0
    if size < 2:
        raise ValueError(f"fold_scores: {r.shape[0]} trials cannot make {folds} folds of at "
                         f"least 2 (each fold drops its last trial)")
    if shuffle:
        r = _rng(generator).permutation(r)
    means = np.array([r[i * size:(i + 1) * size - 1].mean() for i in range(folds)])
    return float(means.mean()), float(means.std())


def r_precision(image_codes, sentence_embs, mismatched_embs, folds=10, generator=None,
                shuffle=True):
    """R-precision (R = 1) of image_codes (N, D) against their sentence_embs (N, D) among
    mismatched_embs (N, M, D) (M = 99 in DM-GAN). Returns (mean, std) over the folds."""
    hits = retrieval_hits(image_codes, sentence_embs, mismatched_embs)
    return fold_scores(hits, folds=folds, generator=generator, shuffle=shuffle)


def sample_mismatched(class_ids, num=99, generator=None, query_class_ids=None,
                      captions_per_image=1, replace=True):
    """For each query, `num` random captions of images whose class id differs from the query's.

    class_ids (I,): class of every image in the pool (COCO: give every image its own id).
    query_class_ids (Q,): the queries' classes; default class_ids (the pool's own images).
    captions_per_image: captions per image, stored image-major (caption k of image j at
    j * captions_per_image + k, AttnGAN's layout); one is drawn uniformly per pick.
    replace: draw images with replacement, as DM-GAN's get_mis_caption does; False gives
    distinct images per query and needs at least `num` eligible ones.
    Returns (Q, num) int64 caption indices.
    """
    classes = np.asarray(class_ids).reshape(-1)
    queries = classes if query_class_ids is None else np.asarray(query_class_ids).reshape(-1)
    if classes.size == 0 or queries.size == 0:
        raise ValueError("sample_mismatched: class_ids and the queries must be non-empty")
    if num < 1 or captions_per_image < 1:
        raise ValueError(f"sample_mismatched: num and captions_per_image must be >= 1, got "
                         f"{num} and {captions_per_image}")
    rng = _rng(generator)
    out = np.empty((queries.size, num), dtype=np.int64)
    for cls in np.unique(queries):
        rows = np.flatnonzero(queries == cls)
        eligible = np.flatnonzero(classes != cls)
        need = 1 if replace else num
        if eligible.size < need:
            raise ValueError(f"sample_mismatched: class id {cls} has only {eligible.size} "
                             f"images of other classes to draw from; {need} needed "
                             f"(num={num}, replace={replace})")
        if replace:
            picks = eligible[rng.integers(0, eligible.size, size=(rows.size, num))]
        else:
            picks = np.stack([rng.choice(eligible, size=num, replace=False) for _ in rows])
        out[rows] = picks
    caption = rng.integers(0, captions_per_image, size=out.shape)
    return out * captions_per_image + caption
