"""Attribute accuracy on the built-in shapes dataset: does an image show the colour, shape, size
and position that its caption names?

    clf, info = load_or_train("eval_cache/attributes_s64.pt", image_size=64)  # trains once
    scores = attribute_accuracy(clf, images, captions)    # images (N, 3, S, S) in [-1, 1]
    scores["accuracy"]["shape"], scores["mean"], info["test_accuracy"]

Classifier. A small CNN (three conv-BN-ReLU-maxpool blocks, one hidden layer, four heads)
reads images resized to 32x32 (bilinear, antialiased) and predicts the index of each attribute
in ATTRIBUTES. It is trained on real renders of the train split at the size of the images it
will judge (300 Adam steps with a one-cycle schedule on 4,000 images: about 20 s on 2 CPU
cores) and reaches 100% on the real test split; that accuracy is stored with the weights
(`info["test_accuracy"]`) because it bounds what the metric can show.

Scoring. Only the attributes a caption names count (`caption_attributes`: one phrasing leaves
out the size, another the position): accuracy[attr] = correct / captions naming attr. `mean` is
the mean over the four attributes, `all_named` the fraction of images whose every named
attribute is right.

Checkpoints are written atomically and read with torch.load(weights_only=True).
"""
import os

import torch
import torch.nn.functional as F
from torch import nn

from t2i_fast.data.shapes import ATTRIBUTES, ShapesDataset, caption_attributes
from t2i_fast.fileio import atomic_write

INPUT_SIZE = 32
FORMAT = "t2i_fast.attribute_classifier"
VERSION = 1
NAMES = tuple(ATTRIBUTES)                          # colour, shape, size, position
TRAIN_DEFAULTS = dict(num_train=4000, steps=300, batch_size=64, lr=3e-3, seed=0)


class AttributeClassifier(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> {attribute: logits (B, K_attribute)}.

    width: channels of the first block (doubling per block); input_size: side the images are
    resized to (a multiple of 8).
    """

    def __init__(self, width=16, input_size=INPUT_SIZE):
        super().__init__()
        if input_size % 8 or input_size < 8:
            raise ValueError(f"AttributeClassifier: input_size must be a multiple of 8, "
                             f"got {input_size}")
        self.width, self.input_size = int(width), int(input_size)
        blocks, channels = [], 3
        for out in (width, 2 * width, 4 * width):
            blocks += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(), nn.MaxPool2d(2)]
            channels = out
        cells = (input_size // 8) ** 2                      # the flattened map keeps position
        self.body = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(channels * cells, 128),
                                  nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(128, len(ATTRIBUTES[name]))
                                    for name in NAMES})

    def resize(self, images):
        """(B, 3, H, W) -> (B, 3, input_size, input_size) float32."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"AttributeClassifier images: expected shape (B, 3, H, W), "
                             f"got {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return x

    def forward(self, images):
        hidden = self.body(self.resize(images))
        return {name: head(hidden) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images, batch_size=256):
        """images (N, 3, H, W) in [-1, 1] -> (N, 4) int64 attribute indices (NAMES order),
        on the CPU. Runs in eval mode on the classifier's device."""
        self.eval()
        device = next(self.parameters()).device
        out = []
        for lo in range(0, images.shape[0], batch_size):
            logits = self(images[lo:lo + batch_size].to(device))
            out.append(torch.stack([logits[n].argmax(dim=1) for n in NAMES], dim=1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(NAMES), dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Labels and scores
# --------------------------------------------------------------------------------------------

def real_images(split, image_size, count, seed=0):
    """The first `count` rendered images of a shapes split and their attributes:
    images (count, 3, S, S) in [-1, 1], labels (count, 4) int64."""
    ds = ShapesDataset(split, image_size=image_size, seed=seed, size=count)
    images = torch.stack([ds.load_image(i, None) for i in range(count)])
    labels = torch.tensor([[ds.attributes(i)[n] for n in NAMES] for i in range(count)])
    return images, labels


def caption_labels(texts):
    """Captions (N strings) -> (N, 4) int64: the attribute index each names, -1 where it names
    none."""
    rows = []
    for text in texts:
        named = caption_attributes(text)
        rows.append([-1 if named[n] is None else named[n] for n in NAMES])
    return torch.tensor(rows, dtype=torch.long).reshape(-1, len(NAMES))


def score_predictions(predictions, labels):
    """predictions (N, 4), labels (N, 4) with -1 = not named -> dict:
    accuracy {attribute: float or None (never named)}, count {attribute: int},
    mean (over the attributes with a count), all_named (images whose named attributes are all
    right, over images naming at least one)."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    if predictions.shape != labels.shape or labels.dim() != 2 or labels.shape[1] != len(NAMES):
        raise ValueError(f"score_predictions: predictions and labels must both be (N, "
                         f"{len(NAMES)}), got {tuple(predictions.shape)} and "
                         f"{tuple(labels.shape)}")
    named = labels >= 0
    right = (predictions == labels) & named
    counts = named.sum(dim=0)
    accuracy = {n: (int(right[:, k].sum()) / int(counts[k]) if counts[k] else None)
                for k, n in enumerate(NAMES)}
    defined = [a for a in accuracy.values() if a is not None]
    any_named = named.any(dim=1)
    all_right = (right == named).all(dim=1) & any_named
    return {"accuracy": accuracy, "count": {n: int(c) for n, c in zip(NAMES, counts)},
            "mean": sum(defined) / len(defined) if defined else None,
            "all_named": (int(all_right.sum()) / int(any_named.sum()) if any_named.any()
                          else None)}


def attribute_accuracy(classifier, images, caption_texts, batch_size=256):
    """Accuracy of `classifier` on images (N, 3, S, S) in [-1, 1] against the attributes each
    of the N captions names (score_predictions' dict)."""
    if images.shape[0] != len(caption_texts):
        raise ValueError(f"attribute_accuracy: {images.shape[0]} images but "
                         f"{len(caption_texts)} captions")
    return score_predictions(classifier.predict(images, batch_size), caption_labels(caption_texts))


def classifier_accuracy(classifier, images, labels):
    """{attribute: accuracy} on images with every attribute labelled (labels (N, 4))."""
    preds = classifier.predict(images)
    return {n: int((preds[:, k] == labels[:, k]).sum()) / len(labels)
            for k, n in enumerate(NAMES)}


# --------------------------------------------------------------------------------------------
# Training and the checkpoint
# --------------------------------------------------------------------------------------------

def train_classifier(image_size=64, num_train=4000, steps=300, batch_size=64, lr=3e-3, seed=0,
                     num_test=1000, width=16):
    """A classifier trained on the first `num_train` train-split renders at `image_size`,
    and its info dict (settings, test_accuracy on the first `num_test` test renders).
    The global RNG is left untouched."""
    if num_train < batch_size or steps < 1 or num_test < 1:
        raise ValueError(f"train_classifier: need num_train >= batch_size, steps >= 1 and "
                         f"num_test >= 1, got {num_train}, {batch_size}, {steps}, {num_test}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = AttributeClassifier(width)
    images, labels = real_images("train", image_size, num_train)
    with torch.no_grad():
        inputs = net.resize(images)               # resize once, not per step
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    net.train()
    with torch.enable_grad():                  # also when called under torch.no_grad()
        for _ in range(steps):
            idx = torch.randint(0, num_train, (batch_size,), generator=g)
            x = inputs[idx] + 0.03 * torch.randn(inputs[idx].shape, generator=g)
            logits = net(x)
            loss = sum(F.cross_entropy(logits[n], labels[idx, k]) for k, n in enumerate(NAMES))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    net.eval().requires_grad_(False)
    test_images, test_labels = real_images("test", image_size, num_test)
    info = {"image_size": int(image_size), "input_size": net.input_size, "width": net.width,
            "train": dict(num_train=num_train, steps=steps, batch_size=batch_size, lr=lr,
                          seed=seed),
            "num_test": int(num_test),
            "test_accuracy": classifier_accuracy(net, test_images, test_labels)}
    return net, info


def save_classifier(path, classifier, info):
    """Write the classifier and its info to `path` atomically."""
    state = {"format": FORMAT, "version": VERSION, "info": info,
             "state_dict": {k: v.detach().cpu() for k, v in classifier.state_dict().items()}}
    return atomic_write(path, lambda f: torch.save(state, f))


def load_classifier(path, map_location="cpu"):
    """(classifier in eval mode, info) from a file written by save_classifier."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"attribute classifier {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:        # truncated zip, foreign pickle: unusable either way
        raise ValueError(f"attribute classifier {path!r} is truncated or corrupt "
                         f"({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"attribute classifier {path!r}: not a file written by "
                         f"save_classifier (expected format {FORMAT!r})")
    if state.get("version") != VERSION:
        raise ValueError(f"attribute classifier {path!r}: version {state.get('version')}, "
                         f"expected {VERSION}; delete it to retrain")
    info = state["info"]
    net = AttributeClassifier(info["width"], info["input_size"])
    try:
        net.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"attribute classifier {path!r} does not fit the architecture: "
                         f"{err}") from err
    return net.eval().requires_grad_(False), info


def load_or_train(path, image_size, **train_kwargs):
    """(classifier, info, trained): the classifier cached at `path` for `image_size`, or a
    new one trained with `train_kwargs` (train_classifier's) and saved there. A cached file
    for another image size, or an unreadable one, is replaced."""
    if os.path.isfile(path):
        try:
            net, info = load_classifier(path)
            if info.get("image_size") == int(image_size):
                return net, info, False
        except ValueError:
            pass                    # a stale or damaged cache entry: train again
    net, info = train_classifier(image_size, **{**TRAIN_DEFAULTS, **train_kwargs})
    save_classifier(path, net, info)
    return net, info, True
