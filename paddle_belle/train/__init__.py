"""SFT and LoRA fine-tuning on PaddleNLP's Trainer (see sft.py), configured by configs/sft/*.yaml."""
from paddle_belle.train.config import LoraSettings, TrainConfig, load_config

__all__ = ["LoraSettings", "TrainConfig", "load_config", "merge_lora", "train"]


def __getattr__(name):
    # sft.py imports Paddle and PaddleNLP (~10 s and more): loaded when train or merge_lora is asked for, so that
    # `paddle-belle plot-loss` (plot.py) does not wait for them (PEP 562).
    if name in ("train", "merge_lora"):
        from paddle_belle.train import sft

        return getattr(sft, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
