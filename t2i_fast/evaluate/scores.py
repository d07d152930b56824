"""The metrics of the evaluation, each a load / prepare / update / finish object."""
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from t2i_fast.evaluate.captions import caption_pool
from t2i_fast.evaluate.common import FOLDS, IS_SPLITS, MISMATCHED, STATS_VERSION, EvalError
from t2i_fast.evaluate.sources import file_hash, real_batches, state_hash
from t2i_fast.metrics import (cmd_score, fid_from_features, fold_scores, gaussian_stats,
                              image_stats, inception_score, load_stats, retrieval_hits,
                              sample_mismatched, save_stats, sentence_stats)


# --------------------------------------------------------------------------------------------
# Metrics. Each has `names` (what it reports) and four steps, called in this order:
#   load(ctx)                          read its weight files (all metrics load before any work)
#   prepare(ctx)                       real-side statistics (cached), captions, classifiers
#   update(ctx, rows, fakes, shared)   one generated batch (b, 3, S, S) for caption rows
#   finish(ctx) -> {name: result}
# --------------------------------------------------------------------------------------------

def classifier_name(image_size):
    """The attribute classifier's file name in the cache folder."""
    return f"attributes_s{image_size}.pt"


class Context:
    """What the metrics share: the run, test split, evaluated captions, matcher, settings."""

    def __init__(self, run, ds, captions, matcher, args, cache):
        self.run, self.ds, self.captions, self.matcher = run, ds, captions, matcher
        self.args, self.cache, self.device = args, Path(cache), run.device
        self.num_real = args.num_real or len(ds)
        self._pool = self._pool_emb = None

    def pool(self):
        """(Captions of every test caption, offsets (T + 1,)), built once."""
        if self._pool is None:
            self._pool = caption_pool(self.ds)
        return self._pool

    def pool_embeddings(self):
        """The matcher's sentence embeddings of the pool (K, D), computed once."""
        if self._pool_emb is None:
            pool, _ = self.pool()
            self._pool_emb = self.matcher.sentences(pool.ids, pool.lens, self.args.batch_size)
        return self._pool_emb

    def real(self, indices):
        return real_batches(self.ds, indices, self.args.batch_size, self.device)

    def stats_path(self, kind, weights):
        """The cache file of real-side statistics `kind` computed with `weights` (a hash)."""
        cfg = self.run.train_cfg
        key = dict(version=STATS_VERSION, dataset=cfg.dataset, data_dir=cfg.data_dir,
                   split="test", image_size=self.ds.image_size, seed=cfg.seed,
                   max_words=self.ds.max_words, num_real=self.num_real, kind=kind,
                   weights=weights)
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        return self.cache / f"{cfg.dataset}-test-s{self.ds.image_size}-{kind}-{digest}.npz"

    def cached_stats(self, kind, weights, compute):
        """(mu, sigma) from the cache, or compute() -> features (N, D) -> stats, saved.
        Returns (stats, cached: bool)."""
        path = self.stats_path(kind, weights)
        if path.is_file():
            try:
                return load_stats(path), True
            except ValueError:
                pass                 # damaged: recompute and overwrite
        stats = compute()
        save_stats(path, *stats)
        return stats, False


def matcher_codes(ctx, fakes, shared):
    """The matcher's codes of the current batch, computed once for all metrics."""
    if "matcher" not in shared:
        shared["matcher"] = ctx.matcher.images(fakes)
    return shared["matcher"]


class RPrecision:
    names = ("r_precision",)

    def load(self, ctx):
        pass

    def prepare(self, ctx):
        pool, offsets = ctx.pool()
        counts = np.diff(offsets)
        self.rng = np.random.default_rng(ctx.args.seed)
        class_ids = np.array([ctx.ds.class_id(j) for j in range(len(ctx.ds))])
        uniform = int(counts[0]) if (counts == counts[0]).all() else None
        try:        # K captions per image: indices j * K + k, as sample_mismatched lays them out
            picks = sample_mismatched(class_ids, MISMATCHED, self.rng,
                                      query_class_ids=ctx.captions.class_ids,
                                      captions_per_image=uniform or 1)
        except ValueError as e:
            raise EvalError(f"r_precision: {e}") from e
        if uniform is None:         # varying counts: pick images, then one of their captions
            picks = offsets[picks] + self.rng.integers(0, counts[picks])
        self.mismatched = torch.from_numpy(picks)                               # (N, 99)
        self.table = ctx.pool_embeddings()
        self.own = ctx.matcher.sentences(ctx.captions.ids, ctx.captions.lens,
                                         ctx.args.batch_size)
        self.codes = []

    def update(self, ctx, rows, fakes, shared):
        self.codes.append(matcher_codes(ctx, fakes, shared))

    def finish(self, ctx):
        codes, hits = torch.cat(self.codes), []
        for lo in range(0, codes.shape[0], 1024):
            sl = slice(lo, lo + 1024)
            hits.append(retrieval_hits(codes[sl], self.own[sl], self.table[self.mismatched[sl]]))
        hits = np.concatenate(hits)
        mean, std = fold_scores(hits, folds=FOLDS, generator=self.rng)
        return {"r_precision": {"mean": mean, "std": std, "hit_rate": float(hits.mean()),
                                "trials": int(hits.size), "folds": FOLDS,
                                "candidates": MISMATCHED + 1, "matcher": ctx.matcher.source}}


class CMD:
    names = ("cmd",)

    def load(self, ctx):
        if ctx.args.embedder == "clip":
            self._load_clip(ctx)
        else:
            self.embed = ctx.matcher.images
            self.weights = "run-" + ctx.matcher.weights_hash()

    def prepare(self, ctx):
        embedder, n = ctx.args.embedder, ctx.num_real
        self.real, cached_img = ctx.cached_stats(
            f"{embedder}-image", self.weights,
            lambda: image_stats(torch.cat([self.embed(x) for x in ctx.real(range(n))])))
        self.sent, cached_sent = ctx.cached_stats(
            f"{embedder}-sentence", self.weights, lambda: sentence_stats(self._sentences(ctx)))
        self.cached = cached_img and cached_sent
        self.fakes = []

    def _load_clip(self, ctx):
        from t2i_fast.metrics.clip_tokenizer import ClipTokenizer
        from t2i_fast.metrics.clip_vit import ClipViT
        args = ctx.args
        try:
            clip = ClipViT.from_file(args.clip_weights).to(ctx.device)
        except (OSError, ValueError) as e:
            raise EvalError(f"--clip-weights {args.clip_weights}: {e}") from e
        try:
            tokenizer = ClipTokenizer(args.clip_bpe)
        except (OSError, ValueError) as e:
            raise EvalError(f"--clip-bpe {args.clip_bpe}: {e}") from e
        context = clip.positional_embedding.shape[0]

        @torch.no_grad()
        def embed(images):
            return clip.encode_image(images.to(ctx.device), input_range=(-1, 1)).float().cpu()

        @torch.no_grad()
        def embed_texts(texts):
            tokens = tokenizer.tokenize(texts, context_length=context, truncate=True)
            return clip.encode_text(tokens.to(ctx.device)).float().cpu()
        self.embed, self.embed_texts = embed, embed_texts
        self.weights = f"clip-{state_hash(clip)}-{file_hash(args.clip_bpe)}"

    def _sentences(self, ctx):
        """Sentence embeddings (K, D) of every caption of the first num_real test images."""
        pool, offsets = ctx.pool()
        rows = slice(0, int(offsets[ctx.num_real]))
        if ctx.args.embedder == "run":
            return ctx.pool_embeddings()[rows]
        texts, step = pool.texts[rows], ctx.args.batch_size
        return torch.cat([self.embed_texts(texts[i:i + step])
                          for i in range(0, len(texts), step)])

    def update(self, ctx, rows, fakes, shared):
        run_space = ctx.args.embedder == "run"
        self.fakes.append(matcher_codes(ctx, fakes, shared) if run_space else self.embed(fakes))

    def finish(self, ctx):
        out = cmd_score(self.real, torch.cat(self.fakes), self.sent)
        out.update(embedder=ctx.args.embedder, comparable=ctx.args.embedder == "clip",
                   real_stats_cached=self.cached)
        if ctx.args.embedder == "run":
            out["note"] = ("run's matching encoders as embedder: compares runs, not comparable "
                           "with published CMD (CLIP ViT-B/32)")
        return {"cmd": out}


class Inception:
    """FID and/or IS from one pass of the FID Inception, its input resized by --fid-resize."""

    def __init__(self, names):
        self.names = tuple(names)

    def load(self, ctx):
        from t2i_fast.metrics import InceptionFID
        self.resize = ctx.args.fid_resize
        path = ctx.args.inception_weights
        try:
            self.net = InceptionFID.from_file(path).to(ctx.device)
        except (OSError, ValueError) as e:
            raise EvalError(f"--inception-weights {path}: {e}") from e

    def prepare(self, ctx):
        self.device, self.pool3, self.logits, self.cached = ctx.device, [], [], None
        if "fid" in self.names:
            self.real, self.cached = ctx.cached_stats(
                f"inception-{self.resize}", "inception-" + state_hash(self.net),
                lambda: gaussian_stats(torch.cat([self.features(x)[0]
                                                  for x in ctx.real(range(ctx.num_real))])))

    @torch.no_grad()
    def features(self, images):
        """(B, 3, S, S) in [-1, 1] -> pool3 (B, 2048), logits (B, 1008), float64 on the CPU."""
        pool3, logits = self.net(images.to(self.device), resize=self.resize)
        return pool3.double().cpu(), logits.double().cpu()

    def update(self, ctx, rows, fakes, shared):
        pool3, logits = self.features(fakes)
        self.pool3.append(pool3)
        self.logits.append(logits)

    def finish(self, ctx):
        out = {}
        if "fid" in self.names:
            out["fid"] = {"value": fid_from_features(self.real, torch.cat(self.pool3)),
                          "real_images": ctx.num_real, "real_stats_cached": self.cached,
                          "resize": self.resize}
        if "is" in self.names:
            mean, std = inception_score(torch.cat(self.logits), splits=IS_SPLITS)
            out["is"] = {"mean": mean, "std": std, "splits": IS_SPLITS, "resize": self.resize}
        return out


class Attributes:
    names = ("attributes",)

    def load(self, ctx):
        pass

    def prepare(self, ctx):
        from t2i_fast.metrics import attributes
        size = ctx.ds.image_size
        self.path = ctx.cache / classifier_name(size)
        net, self.info, self.trained = attributes.load_or_train(self.path, size)
        self.net, self.attributes = net.to(ctx.device), attributes
        self.labels = attributes.caption_labels(ctx.captions.texts)
        unique, where = np.unique(ctx.captions.image, return_inverse=True)
        real = torch.cat([self.net.predict(x) for x in ctx.real(unique)])
        self.real_predictions = real[torch.from_numpy(where.reshape(-1))]
        self.predictions = []

    def update(self, ctx, rows, fakes, shared):
        self.predictions.append(self.net.predict(fakes))

    def finish(self, ctx):
        score = self.attributes.score_predictions
        return {"attributes": {
            "generated": score(torch.cat(self.predictions), self.labels),
            "real": score(self.real_predictions, self.labels),
            "classifier": {"path": str(self.path), "trained_now": self.trained,
                           "test_accuracy": self.info["test_accuracy"]}}}
