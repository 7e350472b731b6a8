"""Generation settings and BELLE's named presets. Framework-free, so that the CLI can list them without
importing Paddle."""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field


@dataclass
class GenerationConfig:
    max_new_tokens: int = 200
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off
    eos_token_id: int | list[int] | None = None  # None: the model config's
    pad_token_id: int | None = None  # None: the model config's, else the first EOS
    stop_strings: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self):
        for name in RULES:
            problem = check(name, getattr(self, name))
            if problem:
                raise ValueError(f"{name} {problem}")
        if self.do_sample and self.temperature == 0:
            raise ValueError("temperature must be > 0 when sampling (do_sample=False is greedy)")


def _whole(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# What each setting admits, in words for the error: checked by GenerationConfig, and by the CLI as it parses the
# flags of the same names (so a bad --top-k is refused before a model loads, naming the flag). Without these,
# top_k=-3 or top_p=1.5 reached Paddle's kernels and came back as their own errors.
RULES = {
    "max_new_tokens": (lambda v: _whole(v) and v >= 1, "must be a whole number >= 1"),
    "min_new_tokens": (lambda v: _whole(v) and v >= 0, "must be a whole number >= 0"),
    "temperature": (lambda v: v >= 0, "must be >= 0"),  # NaN fails every comparison, so it is refused too
    "top_k": (lambda v: _whole(v) and v >= 0, "must be a whole number >= 0 (0: off)"),
    "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1] (1: off)"),
    "repetition_penalty": (lambda v: v > 0, "must be > 0 (1: off)"),
    "seed": (lambda v: v is None or _whole(v) and v >= 0, "must be a whole number >= 0"),  # numpy's default_rng
}


def check(name: str, value) -> str | None:
    """What is wrong with ``value`` for the setting ``name`` ("must be ..., not VALUE"), or None."""
    admits, rule = RULES[name]
    try:
        ok = admits(value)
    except TypeError:  # e.g. None or a string compared with a number
        ok = False
    return None if ok else f"{rule}, not {value!r}"


# Named settings, selectable everywhere a generation happens (CLI --preset, server, eval).
PRESETS = {
    # The belle-7b-2m model card's generate() call.
    "belle-card": GenerationConfig(max_new_tokens=200, do_sample=True, top_k=30, top_p=0.85, temperature=0.35,
                                   repetition_penalty=1.2),
    # BELLE train/src/entry_point/inference.py.
    "belle-train": GenerationConfig(max_new_tokens=128, do_sample=True, top_k=30, top_p=0.6, temperature=0.9,
                                    repetition_penalty=1.2),
    # BELLE's gradio demo.
    "belle-gradio": GenerationConfig(max_new_tokens=512, do_sample=True, top_k=40, top_p=0.75, temperature=0.1,
                                     repetition_penalty=1.2),
    # BELLE's evaluation: temperature 0.001 (their paper, "Exploring the Impact of Instruction Data Scaling"),
    # i.e. nearly greedy, with the card's top-k/top-p/repetition penalty; longer replies for code and math.
    "belle-eval": GenerationConfig(max_new_tokens=512, do_sample=True, top_k=30, top_p=0.85, temperature=0.001,
                                   repetition_penalty=1.2),
    "greedy": GenerationConfig(max_new_tokens=200, do_sample=False),
}


def make_config(preset: str | GenerationConfig | None = None, **overrides) -> GenerationConfig:
    """A preset (by name) or config, with keyword overrides; None values leave the preset's setting."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        preset = PRESETS[preset]
    base = dataclasses.asdict(preset) if preset is not None else {}
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown generation argument(s): {', '.join(unknown)}")
    return GenerationConfig(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def temperature_settings(temperature: float | None) -> dict:
    """OpenAI's convention, which the server and the CLI's --temperature follow: 0 means greedy, any other
    temperature means sampling at it (whatever the preset says); None leaves the preset's."""
    if temperature is None:
        return {}
    return dict(do_sample=temperature != 0, temperature=temperature if temperature != 0 else 1.0)
