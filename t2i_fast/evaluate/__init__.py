"""python -m t2i_fast.evaluate: score a trained run (R-precision, CMD, FID, IS, attributes).

Files, each one topic (the protocol of each metric is in cli.py's docstring):
    cli.py       the command line, the evaluation loop, the report and the table
    captions.py  which caption each evaluated image gets; the mismatched-caption pool
    sources.py   matching encoders (the run's or --matcher), noise, image batches, hashes
    scores.py    the metrics, each with load / prepare / update / finish
    common.py    metric names, constants, EvalError
"""
from t2i_fast.evaluate.captions import select_captions
from t2i_fast.evaluate.cli import build_parser, evaluate, main
from t2i_fast.evaluate.common import METRICS, EvalError
from t2i_fast.evaluate.scores import Context, RPrecision, classifier_name
from t2i_fast.evaluate.sources import Matcher, generate_batches, load_matcher

__all__ = ["main", "evaluate", "build_parser", "METRICS", "EvalError", "select_captions",
           "Context", "RPrecision", "classifier_name", "Matcher", "generate_batches",
           "load_matcher"]
