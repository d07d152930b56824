"""Training learns: objective checks with fixed seeds and bounds an untrained model fails."""
import pytest
import torch
import torch.nn.functional as F

from t2i_fast.data.shapes import COLOURS, dominant_colour
from t2i_fast.runs import load_run
from t2i_fast.train import Run, train_config


def held_out(run, n):
    """Caption 0 of the first n test images: ids (n, L), lengths (n,), colours (n,), images."""
    ds = run.dataset("test")
    items = [ds.item(i, caption_index=0) for i in range(n)]
    return (torch.stack([it["caption"] for it in items]),
            torch.tensor([it["cap_len"] for it in items]),
            torch.tensor([it["attributes"]["colour"] for it in items]),
            torch.stack([it["image"] for it in items]))


def colour_retrieval(run, n=96):
    """For each held-out caption (caption 0 of test image i), does the test image whose code
    is most similar (cosine) show the caption's colour? Chance is about 1/6."""
    caption, cap_len, colour, images = held_out(run, n)
    with torch.no_grad():
        _, sent, _, _ = run.encode(caption, cap_len)
        _, code = run.models.image_encoder.encode_image(images)
    sim = F.normalize(sent, dim=1) @ F.normalize(code, dim=1).T
    return (colour[sim.argmax(dim=1)] == colour).float().mean().item()


@pytest.mark.slow
def test_matching_encoders_learn_colours_from_captions(tmp_path):
    cfg = train_config("tiny", itm_steps=120, steps=1, ckpt_every=1, sample_every=1,
                       dataset_size=512, batch_size=16, num_samples=2, threads=2, seed=3,
                       out=str(tmp_path / "run"))
    untrained = train_config("tiny", itm_steps=0, steps=1, ckpt_every=1, sample_every=1,
                             dataset_size=64, batch_size=4, num_samples=2, threads=2, seed=3,
                             out=str(tmp_path / "untrained"))
    Run(cfg, cfg.out, quiet=True).train()
    Run(untrained, untrained.out, quiet=True).train()
    chance = 1 / len(COLOURS)
    trained_acc = colour_retrieval(load_run(cfg.out))
    untrained_acc = colour_retrieval(load_run(untrained.out))
    print(f"colour retrieval: trained {trained_acc:.3f}, untrained {untrained_acc:.3f}")
    assert untrained_acc < 0.45, untrained_acc
    assert trained_acc > 0.75, (trained_acc, chance)


def generated_colour_accuracy(run, n=300):
    """Share of generated images (EMA G, caption 0 of test image i) whose dominant colour is
    the colour their caption names. Chance is about 1/6."""
    caption, cap_len, colour, _ = held_out(run, n)
    return (dominant_colour(run.generate(caption, cap_len, seed=1)) == colour).float().mean().item()


@pytest.mark.slow
def test_generator_learns_the_captioned_colour(tmp_path):
    def config(name, steps):
        return train_config("tiny", itm_steps=120, steps=steps, ckpt_every=steps,
                            sample_every=steps, log_every=50, dataset_size=2048, batch_size=16,
                            num_samples=4, threads=2, seed=3, ema_decay=0.99,
                            out=str(tmp_path / name))
    trained, untrained = config("trained", 200), config("untrained", 1)
    for cfg in (trained, untrained):
        Run(cfg, cfg.out, quiet=True).train()
    trained_acc = generated_colour_accuracy(load_run(trained.out))
    untrained_acc = generated_colour_accuracy(load_run(untrained.out))
    print(f"generated colour accuracy: trained {trained_acc:.3f}, untrained {untrained_acc:.3f}")
    assert untrained_acc < 0.22, untrained_acc
    assert trained_acc > 0.27, trained_acc
