"""Run by tests/test_train.py under torchrun with 2 gloo processes: trains the tiny preset
and checks after every step that both replicas of G and every D hold identical weights."""
import sys

import torch
import torch.distributed as dist

from t2i_fast.train import Run, train_config
from t2i_fast.train.distributed import teardown


def checksum(run):
    params = list(run.G.parameters()) + list(run.Ds.parameters()) + run.ema
    return torch.cat([p.detach().reshape(-1).double() for p in params])


def main(out):
    cfg = train_config("tiny", itm_steps=2, steps=4, ckpt_every=2, sample_every=4, log_every=2,
                       dataset_size=32, batch_size=4, num_samples=4, threads=1, out=out)
    run = Run(cfg, out, quiet=True)

    def check(run, step):
        mine = checksum(run)
        theirs = [torch.zeros_like(mine) for _ in range(run.d.world)]
        dist.all_gather(theirs, mine)
        if not all(torch.equal(theirs[0], t) for t in theirs):
            raise AssertionError(f"replicas differ after step {step}")

    run.train(hooks=[check])
    if run.d.main:
        print(f"replicas in sync over {run.step} steps on {run.d.world} processes")
    teardown(run.d)


if __name__ == "__main__":
    main(sys.argv[1])
