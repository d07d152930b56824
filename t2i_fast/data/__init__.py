"""Captioned image datasets.

    vocab.py    AttnGAN tokenisation and the Vocabulary (0 = '<end>' = padding)
    base.py     CaptionDataset: the item format and deterministic per-item randomness
    shapes.py   ShapesDataset: the built-in procedurally rendered dataset (no download)
    attngan.py  AttnGANDataset (CUB / COCO on-disk layout) and FolderDataset (image + .txt)
    pickles.py  the restricted unpickler for the AttnGAN metadata pickles
"""
from t2i_fast.data.base import CaptionDataset, image_to_tensor, tensor_to_image
from t2i_fast.data.vocab import Vocabulary, tokenize

__all__ = ["CaptionDataset", "Vocabulary", "tokenize", "image_to_tensor", "tensor_to_image"]
