"""SFT and LoRA fine-tuning on PaddleNLP's Trainer (see sft.py), configured by configs/sft/*.yaml."""
from paddle_belle.train.config import LoraSettings, TrainConfig, load_config
from paddle_belle.train.sft import merge_lora, train

__all__ = ["LoraSettings", "TrainConfig", "load_config", "merge_lora", "train"]
