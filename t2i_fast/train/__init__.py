"""Training: `python -m t2i_fast.train` (see __main__.py), or from Python:

    from t2i_fast.train import Run, train_config
    Run(train_config("tiny", steps=50), "runs/demo").train()
"""
from t2i_fast.train.config import TRAIN_PRESETS, TrainConfig, parse_args, train_config
from t2i_fast.train.loop import Run

__all__ = ["Run", "TrainConfig", "TRAIN_PRESETS", "train_config", "parse_args"]
