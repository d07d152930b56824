"""python -m t2i_fast.sample --run RUN_DIR --caption "a red circle on the left" [...]
python -m t2i_fast.sample --preset dmgan-cub --generator netG_epoch_800.pth \
    --text-encoder text_encoder200.pth --data-dir data/birds --caption "..." [--attention]

Writes one PNG per caption and seed (the EMA generator of the run's newest checkpoint, or the
published generator), and a sheet with the captions beneath (`grid.png`), into --out (default
RUN_DIR/generated; for published weights the generator's path without .pth, /generated).
--attention adds NNN_seedS_attention.png per image: AttnGAN-style overlays of every refinement
block's attention map for each word slot.
"""
import sys
from pathlib import Path

from t2i_fast.data.base import tensor_to_image
from t2i_fast.errors import ArgumentParser, ConfigError, cli_main
from t2i_fast.fileio import check_writable, save_png
from t2i_fast.grid import attention_sheet, caption_grid
from t2i_fast.runs import add_source_arguments, load_source
from t2i_fast.train.distributed import resolve_device


def build_parser():
    p = ArgumentParser(prog="python -m t2i_fast.sample",
                       description="Generate images for captions with a trained run or "
                       "published DM-GAN / AttnGAN / GR-GAN weights.")
    p.add_argument("--caption", action="append", default=[], help="a caption (repeatable)")
    p.add_argument("--captions-file", help="a text file with one caption per line")
    p.add_argument("--num", type=int, default=1, help="images per caption (seeds seed..)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attention", action="store_true",
                   help="also write each image's per-word attention overlays")
    p.add_argument("--out", help="output folder (default RUN_DIR/generated)")
    p.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'cuda:N' or 'auto'")
    published = add_source_arguments(p)
    published.add_argument("--clip-bpe", metavar="PATH", help="CLIP's "
                           "bpe_simple_vocab_16e6.txt.gz (GR-GAN's ITM)")
    return p


def slot_labels(run, tokens, n_slots):
    """The names of the word slots G read for one caption's tokens: its words (clip: the
    tokens after start-of-text, end-of-text included; byte-pair pieces with CLIP's BPE)."""
    codec, words = run.codec, run.vocab.ixtoword
    if run.model_cfg.text_encoder != "clip":
        return [words[int(t)] for t in tokens[:n_slots] if int(t) != 0]
    ids = [int(t) for t in tokens[1:n_slots + 1] if int(t) != 0]
    if codec.bpe is not None:
        return [codec.bpe.decode([i]).strip() for i in ids]
    return [words.get(i, "<end>") for i in ids]


def attention_rows(run, images, maps, tokens):
    """attention_sheet rows: each refinement block with its stage's image and the maps."""
    rows, blocks = [], iter(maps)
    for s, spec in enumerate(run.model_cfg.schedule, start=2):
        for i in range(spec.iterations):
            block = next(blocks)[0]
            name = f"stage {s}" + (f".{i + 1}" if spec.iterations > 1 else "")
            labels = slot_labels(run, tokens, block.shape[0]) if block.shape[0] > 1 else \
                ["sentence"]            # a sentence stage read through the shortcut
            rows.append((name, images[s - 1][0], block, labels))
    return rows


def sample(argv):
    args = build_parser().parse_args(argv)
    captions = list(args.caption)
    if args.captions_file:
        path = Path(args.captions_file)
        if not path.is_file():
            raise ConfigError(f"--captions-file {path} does not exist")
        captions += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not captions:
        raise ConfigError("give at least one --caption or a --captions-file")
    if args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    device = resolve_device(args.device)
    run = load_source(args, device)
    out = check_writable(Path(args.out) if args.out else run.dir / "generated")
    texts = [c for c in captions for _ in range(args.num)]
    seeds = [args.seed + k for _ in captions for k in range(args.num)]
    results = []
    try:
        if args.attention:
            results = [run.generate_attention(t, seed=s) for t, s in zip(texts, seeds)]
            images = [stages[-1][0] for stages, _, _ in results]
        else:
            images = [run.generate_text([t], seed=s)[0] for t, s in zip(texts, seeds)]
    except (KeyError, ValueError) as e:
        known = ", ".join(run.vocab.to_list()[:60])
        raise ConfigError(f"{e.args[0]}; known words include: {known}") from e
    sheets = [attention_sheet(attention_rows(run, *r)) for r in results]
    for i, (img, seed) in enumerate(zip(images, seeds)):
        save_png(tensor_to_image(img), out / f"{i:03d}_seed{seed}.png")
    for i, (sheet, seed) in enumerate(zip(sheets, seeds)):
        save_png(sheet, out / f"{i:03d}_seed{seed}_attention.png")
    save_png(caption_grid(images, texts, columns=min(4, len(images))), out / "grid.png")
    source = (f"checkpoint step {run.step}" if run.weights is None else
              f"generator {run.weights['generator']}")
    print(f"wrote {len(images)} images{' with attention overlays' if sheets else ''} and "
          f"grid.png to {out} ({source})")
    return 0


def main(argv=None):
    return cli_main(sample, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
