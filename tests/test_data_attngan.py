"""AttnGAN-layout and folder datasets on tiny fixtures written in tmp_path, and the restricted
unpickler of their metadata pickles."""
import collections
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_fast.data import pickles
from t2i_fast.data.attngan import AttnGANDataset, FolderDataset
from t2i_fast.data.vocab import Vocabulary, tokenize

S = 16
RED = (230, 20, 20)
CUB_KEYS = {"train": ["001.Red_Bird/Red_Bird_0001", "001.Red_Bird/Red_Bird_0002",
                      "002.Blue_Bird/Blue_Bird_0001"],
            "test": ["002.Blue_Bird/Blue_Bird_0002"]}
BBOX = (10, 8, 8, 6)     # x, y, w, h: r = 6, centre (14, 11) -> crop (8, 5, 20, 17)
CROP = (8, 5, 20, 17)


def py2_pickle(obj):
    """Protocol-2 bytes as Python 2 writes them: str as byte strings (SHORT_BINSTRING)."""
    if isinstance(obj, str):
        data = obj.encode("latin1")
        return b"U" + bytes([len(data)]) + data
    if isinstance(obj, int):
        return b"K" + bytes([obj]) if 0 <= obj < 256 else b"J" + struct.pack("<i", obj)
    if isinstance(obj, list):
        return b"](" + b"".join(py2_pickle(x) for x in obj) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(py2_pickle(k) + py2_pickle(v) for k, v in obj.items()) + b"u"
    raise TypeError(type(obj))


def write_py2(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\x80\x02" + py2_pickle(obj) + b".")


def write_image(path, size=(40, 30), paint=None, seed=0):
    """Random RGB noise; `paint` = (box, colour) fills a box."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    if paint is not None:
        (x1, y1, x2, y2), colour = paint
        arr[y1:y2, x1:x2] = colour
    Image.fromarray(arr).save(path, quality=95, subsampling=0)


def captions_for(key, k):
    name = key.split("/")[-1].lower().replace("_", " ")
    return [f"This {name} has feature number {i}!" for i in range(k)]


def make_cub(root, k=3):
    keys = CUB_KEYS["train"] + CUB_KEYS["test"]
    (root / "CUB_200_2011").mkdir(parents=True)
    with open(root / "CUB_200_2011" / "images.txt", "w") as names, \
            open(root / "CUB_200_2011" / "bounding_boxes.txt", "w") as boxes:
        for i, key in enumerate(keys, start=1):
            names.write(f"{i} {key}.jpg\n")
            boxes.write(f"{i} {float(BBOX[0])} {float(BBOX[1])} {float(BBOX[2])} "
                        f"{float(BBOX[3])}\n")
            write_image(str(root / "CUB_200_2011" / "images" / f"{key}.jpg"),
                        paint=(CROP, RED), seed=i)
            text = root / "text" / f"{key}.txt"
            text.parent.mkdir(parents=True, exist_ok=True)
            text.write_text("\n".join(["", "!!!"] + captions_for(key, k) + ["extra line"]))
    for split, keys in CUB_KEYS.items():
        write_py2(str(root / split / "filenames.pickle"), keys)
        write_py2(str(root / split / "class_info.pickle"), [int(k[:3]) for k in keys])
    return root


def make_coco(root, k=2):
    keys = {"train": ["COCO_train2014_0001", "COCO_train2014_0002"],
            "test": ["COCO_val2014_0001"]}
    texts = {s: [c for key in ks for c in captions_for(key, k)] for s, ks in keys.items()}
    vocab = Vocabulary.build(texts["train"] + texts["test"])
    ids = {s: [vocab.encode(t) for t in ts] for s, ts in texts.items()}
    write_py2(str(root / "captions.pickle"),
              [ids["train"], ids["test"], vocab.ixtoword, vocab.wordtoix])
    for split, ks in keys.items():
        write_py2(str(root / split / "filenames.pickle"), ks)
        for i, key in enumerate(ks):
            write_image(str(root / "images" / f"{key}.jpg"), size=(30, 40), seed=i)
    return root, keys, texts


def decoded(ds, index):
    return [ds.vocab.decode(c) for c in ds.captions(index)]


def check_item(ds, index):
    item = ds[index]
    assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["caption"].shape == (ds.max_words,) and 1 <= item["cap_len"] <= ds.max_words
    assert item["index"] == index
    return item


# --- AttnGAN layout -----------------------------------------------------------------------

def test_cub_builds_captions_from_text_then_reuses_them(tmp_path):
    root = make_cub(tmp_path / "birds")
    ds = AttnGANDataset(root, "train", image_size=S, captions_per_image=3)
    assert ds.kind == "cub" and len(ds) == 3 and (root / "captions.pickle").is_file()
    assert (root / "captions.pickle").read_bytes()[:2] == b"\x80\x02"   # protocol 2
    for i, key in enumerate(CUB_KEYS["train"]):
        # blank and word-less lines are skipped, lines past K are not used
        assert decoded(ds, i) == [" ".join(tokenize(c)) for c in captions_for(key, 3)]
    assert [ds.class_id(i) for i in range(3)] == [1, 1, 2]
    for i in range(3):
        check_item(ds, i)
    assert not [p for p in os.listdir(root) if p.endswith(".tmp")]

    # the written pickle is reused: the text files are no longer needed
    for key in CUB_KEYS["train"] + CUB_KEYS["test"]:
        os.remove(root / "text" / f"{key}.txt")
    test = AttnGANDataset(root, "test", image_size=S, captions_per_image=3)
    assert test.vocab.ixtoword == ds.vocab.ixtoword
    assert decoded(test, 0) == [" ".join(tokenize(c))
                                for c in captions_for(CUB_KEYS["test"][0], 3)]
    assert test.class_id(0) == 2


def test_coco_python2_pickles(tmp_path):
    root, keys, texts = make_coco(tmp_path / "coco")
    for split in ("train", "test"):
        ds = AttnGANDataset(root, split, image_size=S, captions_per_image=2)
        assert ds.kind == "coco" and ds.keys == keys[split] and ds.bboxes is None
        assert [c for i in range(len(ds)) for c in decoded(ds, i)] == \
            [" ".join(tokenize(t)) for t in texts[split]]
        assert [ds.class_id(i) for i in range(len(ds))] == list(range(len(ds)))
        for i in range(len(ds)):
            assert ds.vocab.decode(check_item(ds, i)["caption"]) in decoded(ds, i)


def test_bbox_crop_region(tmp_path):
    root = make_cub(tmp_path / "birds")
    img = AttnGANDataset(root, "test", image_size=S, captions_per_image=3)[0]["image"]
    red = torch.tensor(RED, dtype=torch.float32).div(127.5).sub(1).view(3, 1, 1)
    assert (img - red).abs().mean() < 0.1          # the painted square is all we see
    whole = AttnGANDataset(root, "test", image_size=S, captions_per_image=3, bbox=False)
    assert (whole[0]["image"] - red).abs().mean() > 0.3


def test_items_deterministic_and_vary_across_epochs(tmp_path):
    root = make_cub(tmp_path / "birds")
    a = AttnGANDataset(root, "train", image_size=S, captions_per_image=3, seed=5)
    b = AttnGANDataset(root, "train", image_size=S, captions_per_image=3, seed=5)
    for epoch in (0, 3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(len(a)):
            x, y = a[i], b[i]
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["caption"], y["caption"])
    seen = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        item = a[0]
        seen.add((item["image"].numpy().tobytes(), item["caption"].numpy().tobytes()))
    assert len(seen) > 1
    # the test split is not augmented: the image does not change with the epoch
    t = AttnGANDataset(root, "test", image_size=S, captions_per_image=3)
    first = t[0]["image"]
    t.set_epoch(7)
    assert torch.equal(first, t[0]["image"])


def test_numpy_class_info(tmp_path):
    root, keys, _ = make_coco(tmp_path / "coco")
    with open(root / "train" / "class_info.pickle", "wb") as f:
        pickle.dump(np.array([7, 9], dtype=np.int64), f, protocol=2)
    ds = AttnGANDataset(root, "train", image_size=S, captions_per_image=2)
    assert [ds.class_id(i) for i in range(2)] == [7, 9]


def test_attngan_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        AttnGANDataset(tmp_path / "nowhere")
    root = make_cub(tmp_path / "birds")
    with pytest.raises(ValueError, match="split"):
        AttnGANDataset(root, "val")
    with pytest.raises(ValueError, match="Red_Bird_0001.txt has 4 captions"):
        AttnGANDataset(root, captions_per_image=5)       # too few captions in text/
    assert not (root / "captions.pickle").exists()
    AttnGANDataset(root, captions_per_image=3)                # writes captions.pickle
    with pytest.raises(ValueError, match=r"9 train captions .* 3 images × 2"):
        AttnGANDataset(root, captions_per_image=2)
    os.remove(root / "CUB_200_2011" / "images" / f"{CUB_KEYS['test'][0]}.jpg")
    ds = AttnGANDataset(root, "test", image_size=S, captions_per_image=3)
    with pytest.raises(FileNotFoundError, match="Blue_Bird_0002.jpg"):
        ds[0]
    write_py2(str(root / "test" / "class_info.pickle"), [1, 2])
    with pytest.raises(ValueError, match="class_info.pickle: 2 class labels, expected 1"):
        AttnGANDataset(root, "test", captions_per_image=3)
    os.remove(root / "CUB_200_2011" / "bounding_boxes.txt")
    with pytest.raises(FileNotFoundError, match="bounding_boxes.txt"):
        AttnGANDataset(root, "train", captions_per_image=3)
    os.remove(root / "train" / "filenames.pickle")
    with pytest.raises(FileNotFoundError, match="filenames.pickle"):
        AttnGANDataset(root, "train", captions_per_image=3)


# --- restricted unpickler -----------------------------------------------------------------

class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_unpickler_refuses_globals(tmp_path):
    path, target = tmp_path / "filenames.pickle", tmp_path / "pwned"
    path.write_bytes(pickle.dumps([_Evil(target)], protocol=2))
    with pytest.raises(pickles.ForbiddenGlobalError, match=r"filenames.pickle.*system"):
        pickles.load_filenames(path)
    assert not target.exists()
    path.write_bytes(pickle.dumps([collections.OrderedDict()], protocol=2))
    with pytest.raises(pickles.ForbiddenGlobalError, match="collections.OrderedDict"):
        pickles.load(path)


def test_unpickler_reads_bytes_and_rejects_corrupt_files(tmp_path):
    path = tmp_path / "filenames.pickle"
    path.write_bytes(pickle.dumps([b"a/b", "c/d"], protocol=2))    # bytes via _codecs.encode
    assert pickles.load_filenames(path) == ["a/b", "c/d"]
    path.write_bytes(pickle.dumps(["a/b", "c/d"], protocol=2)[:-6])
    with pytest.raises(ValueError, match="filenames.pickle: truncated or corrupt"):
        pickles.load_filenames(path)
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ValueError, match="filenames must be a list"):
        pickles.load_filenames(path)
    with pytest.raises(FileNotFoundError, match="missing.pickle"):
        pickles.load(tmp_path / "missing.pickle")


def test_write_captions_round_trip(tmp_path):
    vocab = Vocabulary.build(["a red bird", "a blue bird"])
    path = tmp_path / "captions.pickle"
    pickles.write_captions(path, [[1, 2, 3]], [[1, 4, 3]], vocab.ixtoword, vocab.wordtoix)
    assert pickles.load_captions(path) == ([[1, 2, 3]], [[1, 4, 3]], vocab.ixtoword,
                                           vocab.wordtoix)
    assert os.listdir(tmp_path) == ["captions.pickle"]


# --- plain folders ------------------------------------------------------------------------

def make_folder(folder, names, ext=".png"):
    for i, name in enumerate(names):
        write_image(str(folder / f"{name}{ext}"), seed=i)
        (folder / f"{name}.txt").write_text(f"a {name} picture\n\nthe {name} again\n")


def test_folder_flat(tmp_path):
    make_folder(tmp_path, ["cat", "dog"])
    (tmp_path / "notes.txt").write_text("not a caption\n")
    ds = FolderDataset(tmp_path, image_size=S)
    assert len(ds) == 2 and decoded(ds, 1) == ["a dog picture", "the dog again"]
    assert ds.split == "train" and ds.class_id(1) == 1
    check_item(ds, 0)
    with pytest.raises(FileNotFoundError, match="test"):
        FolderDataset(tmp_path, split="test")


def test_folder_splits_share_vocabulary(tmp_path):
    make_folder(tmp_path / "train", ["cat", "dog"], ext=".jpg")
    make_folder(tmp_path / "test", ["owl"], ext=".jpeg")
    train = FolderDataset(tmp_path, image_size=S)
    test = FolderDataset(tmp_path, split="test", image_size=S)
    assert len(train) == 2 and len(test) == 1
    assert train.vocab.ixtoword == test.vocab.ixtoword and "owl" in train.vocab
    assert decoded(test, 0) == ["a owl picture", "the owl again"]
    assert torch.equal(test[0]["image"], test[0]["image"])
    with pytest.raises(KeyError, match="owl"):
        FolderDataset(tmp_path, split="test", vocab=Vocabulary.build(["a cat picture"]))


@pytest.mark.parametrize("text, match", [(None, "has no caption file"),
                                         ("\n  \n", "is empty"),
                                         ("a cat\n?!\n", "has no words")])
def test_folder_errors(tmp_path, text, match):
    make_folder(tmp_path, ["cat"])
    if text is None:
        os.remove(tmp_path / "cat.txt")
    else:
        (tmp_path / "cat.txt").write_text(text)
    with pytest.raises((FileNotFoundError, ValueError), match=f"cat.*{match}"):
        FolderDataset(tmp_path)
