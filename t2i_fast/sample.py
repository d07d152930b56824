"""python -m t2i_fast.sample --run RUN_DIR --caption "a red circle on the left" [...]

Writes one PNG per caption and seed (the EMA generator of the run's newest checkpoint), and a
sheet with the captions beneath (`grid.png`), into --out (default RUN_DIR/generated).
"""
import argparse
import sys
from pathlib import Path

from t2i_fast.data.base import tensor_to_image
from t2i_fast.grid import caption_grid
from t2i_fast.runs import load_run
from t2i_fast.train.checkpoint import CheckpointError


def build_parser():
    p = argparse.ArgumentParser(prog="python -m t2i_fast.sample",
                                description="Generate images for captions with a trained run.")
    p.add_argument("--run", required=True, help="run directory written by t2i_fast.train")
    p.add_argument("--caption", action="append", default=[], help="a caption (repeatable)")
    p.add_argument("--captions-file", help="a text file with one caption per line")
    p.add_argument("--num", type=int, default=1, help="images per caption (seeds seed..)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="a checkpoint file of the run (default: the newest)")
    p.add_argument("--out", help="output folder (default RUN_DIR/generated)")
    p.add_argument("--device", default="cpu")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    captions = list(args.caption)
    if args.captions_file:
        path = Path(args.captions_file)
        if not path.is_file():
            raise SystemExit(f"error: --captions-file {path} does not exist")
        captions += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not captions:
        raise SystemExit("error: give at least one --caption or a --captions-file")
    if args.num < 1:
        raise SystemExit(f"error: --num must be >= 1, got {args.num}")
    try:
        run = load_run(args.run, device=args.device, checkpoint=args.checkpoint)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        raise SystemExit(f"error: --run {args.run}: {e}")
    try:
        texts = [c for c in captions for _ in range(args.num)]
        seeds = [args.seed + k for _ in captions for k in range(args.num)]
        images = [run.generate_text([t], seed=s)[0] for t, s in zip(texts, seeds)]
    except (KeyError, ValueError) as e:
        known = ", ".join(run.vocab.to_list()[:60])
        raise SystemExit(f"error: {e.args[0]}\nknown words include: {known}")
    out = Path(args.out) if args.out else run.dir / "generated"
    out.mkdir(parents=True, exist_ok=True)
    for i, (img, seed) in enumerate(zip(images, seeds)):
        tensor_to_image(img).save(out / f"{i:03d}_seed{seed}.png")
    caption_grid(images, texts, out / "grid.png", columns=min(4, len(images)))
    print(f"wrote {len(images)} images and grid.png to {out} (checkpoint step {run.step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
