"""A training run as one YAML file (configs/sft/*.yaml), with ``--key value`` overrides from the command line.

Top-level keys are TrainConfig's fields; ``training:`` holds PaddleNLP ``TrainingArguments`` fields as they are
(output_dir, learning_rate, sharding, tensor_parallel_degree, ...), so every distributed option PaddleNLP has is
available without a wrapper of ours.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml



@dataclass
class LoraSettings:
    # BELLE's LoRA recipe (BELLE train/configs/lora_config_{bloom,llama}.json): r 16, alpha 32, dropout 0.05.
    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None  # default: the model's arch.lora_targets
    # Trained in full beside the adapter, e.g. the embeddings of a vocabulary-extended model (BELLE-LLaMA-EXT).
    trainable_modules: list[str] | None = None


@dataclass
class TrainConfig:
    model: str  # checkpoint directory, community name or registry short name
    train_data: list[str]  # files, directories or belle:NAME releases
    eval_data: list[str] = field(default_factory=list)
    style: str = "belle-v2"  # prompt format of the samples (paddle_belle.prompts)
    max_length: int = 1024
    skip_bad: bool = False
    streaming: bool = False  # read the data lazily (needs training.max_steps)
    packing: bool = False  # several short samples per row, each attending to itself only
    global_batch_size: int | None = None  # per-device batch x accumulation x data-parallel degree, checked
    dtype: str = "auto"  # of the weights: auto = bfloat16 where the device has it and training.bf16, else float32
    lora: LoraSettings | None = None
    training: dict = field(default_factory=dict)  # PaddleNLP TrainingArguments

    def __post_init__(self):
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        if isinstance(self.eval_data, str):
            self.eval_data = [self.eval_data]
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if "output_dir" not in self.training:
            raise ValueError("training.output_dir is required")


def parse_overrides(items: list[str]) -> dict:
    """``["--training.learning_rate", "1e-4", "--skip-bad"]`` -> nested dict; values are YAML scalars, and a key
    without a value (``--skip-bad``) means true."""
    overrides: dict = {}
    i = 0
    while i < len(items):
        key = items[i]
        if not key.startswith("--"):
            raise ValueError(f"expected a --key before {key!r}")
        value = True
        if i + 1 < len(items) and not items[i + 1].startswith("--"):
            value, i = _scalar(items[i + 1]), i + 1
        i += 1
        *path, last = key[2:].replace("-", "_").split(".")
        node = overrides
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return overrides


def _scalar(text: str):
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; a learning rate it is
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


def load_config(path: str | Path, overrides: list[str] | dict | None = None) -> TrainConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    raw = _merge(raw, overrides or {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))}; "
                         "TrainingArguments go under training:)")
    try:
        return TrainConfig(**raw)
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from None
