"""Evaluation metrics: FID and IS (FID Inception-v3), R-precision (DM-GAN's), CMD (GR-GAN's).

Files, each one topic:
    frechet.py    Gaussian stats of features, Fréchet distance (no scipy), .npz stats I/O
    inception.py  the FID Inception-v3 (pytorch-fid port of the 2015-12-05 TF graph), local
                  weights only; fid_from_features, inception_score
    retrieval.py  R-precision with DM-GAN's folds, mismatched-caption sampling
    cmd.py        GR-GAN's CMD from image / sentence embeddings or cached stats
    attributes.py attribute classifier of the shapes dataset, attribute accuracy
    clip_vit.py   CLIP ViT (B/32) in OpenAI / open_clip naming, for CMD
    clip_tokenizer.py  CLIP's byte-pair tokenizer from a local merges file

All scores are computed in float64 numpy; inputs may be arrays or tensors. Importing this package
builds nothing and reads no file.
"""
from t2i_fast.metrics.cmd import (IMAGE_SCALE, SENTENCE_SCALE, cmd_score, embed_stats,
                                  image_stats, normalized, sentence_stats)
from t2i_fast.metrics.frechet import (frechet_distance, gaussian_stats, load_stats,
                                      resolve_stats, save_stats)
from t2i_fast.metrics.inception import InceptionFID, fid_from_features, inception_score
from t2i_fast.metrics.retrieval import (fold_scores, r_precision, retrieval_hits,
                                        sample_mismatched)

__all__ = [
    "gaussian_stats", "frechet_distance", "save_stats", "load_stats", "resolve_stats",
    "InceptionFID", "fid_from_features", "inception_score",
    "r_precision", "retrieval_hits", "fold_scores", "sample_mismatched",
    "cmd_score", "embed_stats", "image_stats", "sentence_stats", "normalized",
    "IMAGE_SCALE", "SENTENCE_SCALE",
]
