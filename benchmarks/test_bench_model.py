"""Model benchmarks: the generator training step, fused + lean vs eager.

Run: pytest benchmarks/test_bench_model.py --benchmark-only

Providers: 'fused-lean' (auto backend of t2i_fast.ops, lean=True: recomputed residual and
up blocks, folded [r'; r']) and 'eager' (impl='reference', lean=False: upstream-style eager
execution). Three measurements:

1. test_generator_step: one G training step (forward, the full G loss with the Ds and the
   matching encoder, backward, Adam step). CPU: the `small` preset at 64^2, batch 4; GPU:
   `grgan-coco` at 256^2, batch 8 (the upstream batch size).
2. test_saved_bytes_per_iteration (device-independent): bytes saved for backward per
   word-level refinement iteration at 256^2, batch 1, GR-GAN widths = saved_bytes(G with k+1
   iterations) - saved_bytes(G with k). extra_info['saved_bytes_ratio'] = lean-fused / eager;
   the target is <= 1/8.
3. test_max_iterations_in_budget (GPU only): the largest number of word-level iterations
   (the first at 128^2 -> 256^2, the rest at 256^2) for which a G forward + backward at
   batch 16 fits in 40 GiB (torch.cuda.set_per_process_memory_fraction), by doubling and
   bisection with one subprocess per trial.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from bench_utils import DEVICE, ON_GPU, measure
from t2i_fast.models import G_NET, StageSpec, build_models, generator_loss, get_config
from t2i_fast.profiling import saved_bytes

PROVIDERS = {"fused-lean": dict(lean=True, impl=None), "eager": dict(lean=False,
                                                                     impl="reference")}
BUDGET_GIB = 40
BUDGET_BATCH = 16


def grgan_with(word_iterations, **overrides):
    """GR-GAN with `word_iterations` word-level blocks: 64 -> 128 (sentence) -> 256 (word)."""
    return get_config("grgan-coco", schedule=(StageSpec("sentence"),
                                              StageSpec("word", True, word_iterations)),
                      **overrides)


def g_inputs(cfg, batch, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    slots = cfg.words_num
    lens = torch.randint(1, slots + 1, (batch,), generator=gen)
    mask = torch.arange(slots)[None, :] >= lens[:, None]
    z = torch.randn(batch, cfg.z_dim, generator=gen)
    sent = torch.randn(batch, cfg.text_dim, generator=gen)
    words = torch.randn(batch, cfg.text_dim, slots, generator=gen)
    return [t.to(device) for t in (z, sent, words, mask, lens)]


# --------------------------------------------------------------------------------------------
# 1. the generator training step
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_generator_step(benchmark, provider):
    if ON_GPU:
        cfg, batch = get_config("grgan-coco", **PROVIDERS[provider]), 8
    else:
        cfg, batch = get_config("small", **PROVIDERS[provider]), 4
    benchmark.group = f"generator step {cfg.name} {cfg.image_size}^2 batch {batch}"
    torch.manual_seed(0)
    models = build_models(cfg, DEVICE)
    models.image_encoder.requires_grad_(False)   # frozen during the G step, as upstream
    models.discriminators.requires_grad_(False)
    z, sent, words, mask, lens = g_inputs(cfg, batch, DEVICE)
    optimizer = torch.optim.Adam(models.generator.parameters(), lr=cfg.lr_g, betas=cfg.betas)

    def step():
        optimizer.zero_grad(set_to_none=True)
        images, _, mu, logvar = models.generator(z, sent, words, mask)
        loss, _ = generator_loss(cfg, models.discriminators, models.image_encoder, images, sent,
                                 words, mask, lens, mu, logvar)
        loss.backward()
        optimizer.step()
        return loss

    saved = saved_bytes(lambda: models.generator(z, sent, words, mask)[0][-1].sum())
    measure(benchmark, step, saved=saved, provider=provider, preset=cfg.name, batch=batch,
            image_size=cfg.image_size, g_forward_saved_bytes=saved)


# --------------------------------------------------------------------------------------------
# 2. bytes saved for backward per word-level iteration at 256^2 (device-independent)
# --------------------------------------------------------------------------------------------

def saved_by_generator(word_iterations, provider, device):
    cfg = grgan_with(word_iterations, **PROVIDERS[provider])
    torch.manual_seed(0)
    G = G_NET.from_config(cfg).to(device)
    # Batch 1: training-mode BatchNorm1d needs two samples, so the 4x4 stage's BN1d runs in
    # eval mode; it is the same for k and k + 1 iterations and cancels in the difference.
    G.h_net1.fc[1].eval()
    z, sent, words, mask, _ = g_inputs(cfg, 1, device)
    return saved_bytes(lambda: G(z, sent, words, mask)[0][-1].sum())


def test_saved_bytes_per_iteration(benchmark):
    benchmark.group = "saved bytes per word-level iteration, 256^2 batch 1"
    k = 1
    result = {}

    def run():
        for provider in PROVIDERS:
            low = saved_by_generator(k, provider, DEVICE)
            high = saved_by_generator(k + 1, provider, DEVICE)
            result[provider] = high - low
        return result

    benchmark.pedantic(run, rounds=1, iterations=1)
    ratio = result["fused-lean"] / result["eager"]
    benchmark.extra_info.update(
        device=DEVICE, torch=torch.__version__, image_size=256, batch=1, gf_dim=64, r_num=3,
        text_dim=512, words_num=12, iterations_compared=[k, k + 1],
        eager_bytes_per_iteration=result["eager"],
        lean_fused_bytes_per_iteration=result["fused-lean"], saved_bytes_ratio=ratio,
        target_ratio=1 / 8)
    assert ratio <= 1 / 8, f"lean/eager saved bytes per iteration {ratio:.3f} > 1/8"


# --------------------------------------------------------------------------------------------
# 3. the most word-level iterations that fit a memory budget (GPU only)
# --------------------------------------------------------------------------------------------

def trial(provider, word_iterations, budget_gib=BUDGET_GIB, batch=BUDGET_BATCH):
    """One G forward + backward at 256^2 under the budget; run in a fresh process."""
    torch.cuda.set_per_process_memory_fraction(
        budget_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    cfg = grgan_with(word_iterations, **PROVIDERS[provider])
    torch.manual_seed(0)
    try:
        G = G_NET.from_config(cfg).cuda()
        z, sent, words, mask, _ = g_inputs(cfg, batch, "cuda")
        images, _, mu, logvar = G(z, sent, words, mask)
        (sum(im.float().mean() for im in images) + mu.mean() + logvar.mean()).backward()
        torch.cuda.synchronize()
    except torch.OutOfMemoryError:
        return {"fits": False}
    return {"fits": True, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def run_trial(provider, word_iterations):
    cmd = [sys.executable, __file__, "--trial", provider, str(word_iterations)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
        + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"trial {provider} {word_iterations} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def largest_fitting(provider, limit=256):
    """Doubling then bisection over the word-level iteration count; returns (n, log)."""
    log = {}

    def fits(n):
        log[n] = run_trial(provider, n)
        return log[n]["fits"]
    if not fits(1):
        return 0, log
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low, log


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_max_iterations_in_budget(benchmark, provider):
    benchmark.group = f"word-level iterations in {BUDGET_GIB} GiB, 256^2 batch {BUDGET_BATCH}"
    result = {}

    def run():
        result["n"], result["log"] = largest_fitting(provider)
        return result["n"]

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(
        provider=provider, device=DEVICE, gpu=torch.cuda.get_device_name(0),
        torch=torch.__version__, budget_gib=BUDGET_GIB, batch=BUDGET_BATCH, image_size=256,
        max_word_iterations=result["n"],
        trials={str(k): v for k, v in sorted(result["log"].items())})


if __name__ == "__main__" and sys.argv[1:2] == ["--trial"]:
    print(json.dumps(trial(sys.argv[2], int(sys.argv[3]))))
