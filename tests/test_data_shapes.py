"""The built-in shapes dataset: determinism, captions that name the attributes, rendering."""
import pytest
import torch

from t2i_fast.data.base import image_to_tensor
from t2i_fast.data.shapes import (ATTRIBUTES, COLOURS, ShapesDataset, class_of, dominant_colour,
                                  num_classes)
from t2i_fast.data.vocab import Vocabulary, tokenize


def test_items_are_deterministic_by_seed_epoch_and_index():
    a, b = ShapesDataset("train", 32, size=20), ShapesDataset("train", 32, size=20)
    for i in (0, 7, 19):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["caption"], y["caption"])
    other = ShapesDataset("train", 32, size=20, seed=1)
    assert any(a.attributes(i) != other.attributes(i) for i in range(20))
    test = ShapesDataset("test", 32, size=20)
    assert any(a.attributes(i) != test.attributes(i) for i in range(20))
    picks = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        picks.add(tuple(a[3]["caption"].tolist()))
    assert len(picks) > 1          # the caption drawn changes with the epoch


def test_kept_renders_equal_fresh_ones_and_are_not_shared(monkeypatch):
    ds = ShapesDataset("train", 32, size=5)
    first = ds.load_image(2, None)
    first.fill_(0.0)                       # the caller's tensor is its own
    monkeypatch.setattr(ds, "render", lambda index: pytest.fail("image 2 rendered twice"))
    again = ds.load_image(2, None)
    assert torch.equal(again, image_to_tensor(ShapesDataset("train", 32, size=5).render(2)))
    assert not torch.equal(again, first)


def test_captions_name_the_attributes_and_decode():
    ds = ShapesDataset("test", 32, size=50)
    for i in range(50):
        names = {k: ATTRIBUTES[k][v] for k, v in ds.attributes(i).items()}
        texts = ds.describe(i)
        assert len(texts) == ds.captions_per_image
        for k in range(ds.captions_per_image):
            item = ds.item(i, caption_index=k)
            words = ds.vocab.decode(item["caption"][:item["cap_len"]])
            assert words == " ".join(tokenize(texts[k]))
            assert names["colour"] in words.split() and names["shape"] in words.split()
        assert item["class_id"] == class_of(ds.attributes(i)) < num_classes()


def test_images_show_the_captioned_colour():
    ds = ShapesDataset("test", 64, size=60)
    images = torch.stack([ds[i]["image"] for i in range(60)])
    assert images.shape == (60, 3, 64, 64)
    assert images.min() >= -1 and images.max() <= 1
    colours = torch.tensor([ds.attributes(i)["colour"] for i in range(60)])
    assert torch.equal(dominant_colour(images), colours)
    # a flat grey image has no foreground; a wrong-colour image is told apart
    assert dominant_colour(torch.zeros(1, 3, 8, 8)).item() == -1
    red = torch.tensor(COLOURS["red"], dtype=torch.float32) / 127.5 - 1
    assert dominant_colour(red.view(1, 3, 1, 1).expand(1, 3, 8, 8)).item() == 0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("val")
    with pytest.raises(ValueError, match="size"):
        ShapesDataset("test", size=5000)
    with pytest.raises(ValueError, match="image_size"):
        ShapesDataset("test", image_size=4)


def test_vocabulary_round_trip_and_errors():
    vocab = Vocabulary.build(["A red circle!", "a blue square"])
    assert vocab.decode(vocab.encode("a blue circle")) == "a blue circle"
    with pytest.raises(KeyError, match="green"):
        vocab.encode("a green circle")
    with pytest.raises(ValueError, match="no words"):
        vocab.encode("!!")
    with pytest.raises(ValueError, match="<end>"):
        Vocabulary({0: "a", 1: "b"})
