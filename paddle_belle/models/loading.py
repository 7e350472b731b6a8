"""Loading and saving our models: safe, strict and atomic, with PaddleNLP's names and layout. (PaddleNLP's own
``from_pretrained`` unpickles ``.pdparams`` with ``paddle.load``, running any code a hostile file holds, and its
saves are not atomic.) A quantized checkpoint gets QuantLinears from the quantization runtime."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import paddle
from paddlenlp.transformers.model_utils import dtype_guard, no_init_weights
from tqdm.auto import tqdm

from paddle_belle import arch, prompts
from paddle_belle.checkpoint import CONFIG_NAME, CheckpointError, iter_state_dict, read_config, save_state_dict
from paddle_belle.checkpoint import to_paddle, write_json
from paddle_belle.convert import engine
from paddle_belle.cpu import set_cpu_threads
from paddle_belle.quant.format import QuantConfig
from paddle_belle.quant.linear import keep_half, replace_linears


def check_dtype(dtype) -> str:
    """The dtype as a string if the current device can run it, else a clear error."""
    name = str(dtype).replace("paddle.", "")
    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, not {dtype!r}")
    if name == "float32":
        return name
    device = paddle.get_device()
    if device == "cpu":  # half weights, float32 arithmetic (quant/linear.py keep_half): on request only, see load
        return name
    # Elsewhere ask Paddle rather than assume a vendor.
    supported = (paddle.amp.is_float16_supported(device) if name == "float16"
                 else paddle.amp.is_bfloat16_supported(device))
    if not supported:
        raise ValueError(f"dtype {name} cannot run on device {device!r}; use float32 there")
    return name


def default_dtype(config) -> str:
    """The checkpoint's own dtype where the device computes in it, else float32. On the CPU float32 unless asked:
    half weights there are read through the native kernels, whose float32 path is not yet the faster one."""
    if paddle.get_device() == "cpu":
        return "float32"
    try:
        return check_dtype(getattr(config, "dtype", None) or "float32")
    except ValueError:
        return "float32"


def hf_layout(path: Path, model_type: str) -> bool:
    """Whether the checkpoint directory ``path`` is in HF's layout (or one we do not read), not PaddleNLP's."""
    return path.is_dir() and not engine.in_paddle_layout(path, model_type)


def foreign_quantization(quantization, path: Path) -> None:
    """One line saying what to do with a checkpoint quantized by another tool (transformers' ``quant_method``: AutoGPTQ,
    AWQ, bitsandbytes, ...), whose packed tensors our format does not read as they are."""
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    if method is None:
        return
    where = f"{path / CONFIG_NAME}: a {method} checkpoint (transformers' quantization_config)"
    if method == "gptq" and quantization.get("checkpoint_format", "gptq") == "gptq":
        index = path / "model.safetensors.index.json"  # shards: the index names them all
        weights = index if index.is_file() else next(iter(sorted(path.glob("*.safetensors"))), path / "model.safetensors")
        raise CheckpointError(f"{where}; import it once, keeping its codes: paddle-belle convert --from-gptq "
                              f"{weights} OUT_DIR")
    raise CheckpointError(f"{where}; paddle_belle imports GPTQ (checkpoint_format gptq) only: quantize the float "
                          "model with paddle-belle quantize instead")


def load(cls, path, dtype=None, strict=True, config=None, threads=None, **config_overrides):
    """Build a ``cls`` model from a local checkpoint directory (config.json + weights) in PaddleNLP's layout or
    HF's (mapped while loading, see load_weights). On CPU, ``threads`` (default: all available cores) are given
    to Paddle's kernels."""
    path = Path(path)
    if paddle.get_device() == "cpu":
        set_cpu_threads(threads)
    quantization = None
    if config is None:
        raw = read_config(path)
        if hf_layout(path, cls.arch.model_type):  # HF field names (torch_dtype, rope_scaling, n_embed, ...)
            raw = arch.paddle_config(cls.arch.model_type, raw)
        # Ours (quant/format.py), not PaddleNLP's QuantizationConfig, which would try to parse it.
        quantization = raw.pop("quantization_config", None)
        foreign_quantization(quantization, path)
        config = cls.config_class.from_dict(raw, **config_overrides)
        style = None if getattr(config, "prompt_style", None) else prompts.directory_style(path)
        if style:  # none recorded: the style of the model's own chat template, where one of ours renders like it
            config.prompt_style = style
    weights = check_dtype(dtype) if dtype is not None else default_dtype(config)
    half_on_cpu = weights != "float32" and paddle.get_device() == "cpu"
    config.dtype = "float32" if half_on_cpu else weights  # what the model computes in
    # LazyGuard: parameters get memory only when their weights arrive, so a 7B model is not initialised first, and
    # half weights are loaded as they are stored, without a float32 copy of the model ever existing.
    with no_init_weights(), dtype_guard(config.dtype), paddle.LazyGuard():
        model = cls(config)
        if quantization is not None:  # a quantized checkpoint: integer weights stay integer (QuantLinear)
            replace_linears(model, QuantConfig.from_dict(quantization, f"{path / CONFIG_NAME}"))
        if half_on_cpu:
            keep_half(model, weights)
    load_weights(model, path, strict=strict)
    model.eval()
    return model


def load_weights(model, path, strict=True):
    """Load every parameter of ``model`` from ``path``; shape mismatches are errors, as are missing/unexpected
    names (warnings instead when ``strict`` is False). An HF-layout directory is mapped to PaddleNLP's names and
    layout one tensor at a time by the converter's plan (convert/engine.py), so no converted copy is needed."""
    path = Path(path)
    params = model.state_dict()
    tied = model.arch.tied_copies(model.config)
    loaded, unexpected, copies = set(), [], {}
    tensors = engine.iter_hf_as_paddle(path) if hf_layout(path, model.arch.model_type) else iter_state_dict(path)
    progress = tqdm(total=len(params), desc="loading weights", unit="tensor", disable=None)
    for name, array in tensors:
        if name in tied:
            copies[name] = array
            continue
        if name not in params:
            unexpected.append(name)
            continue
        param = params[name]
        if list(array.shape) != list(param.shape):
            raise CheckpointError(
                f"{path}: tensor {name} has shape {list(array.shape)}, the config expects {list(param.shape)}"
            )
        # The parameter takes the loaded tensor's memory, as Paddle's own initializers hand theirs over
        # (paddle/nn/initializer/normal.py): set_value would copy it, a second copy of the model while loading.
        to_paddle(array, param.dtype)._share_underline_tensor_to(param)
        del array  # before the next tensor is read
        loaded.add(name)
        progress.update()
    progress.close()
    problems = []
    missing = sorted(set(params) - loaded)
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(sorted(unexpected)[:5])}")
    if problems and (strict or missing):
        # Missing weights are always fatal: a model with uninitialised parameters is never what anyone wants.
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    if problems:
        warnings.warn(f"{path}: " + "; ".join(problems))
    for name, array in copies.items():
        source = params[tied[name]].astype("float32").numpy().T
        if not np.array_equal(to_paddle(array, paddle.float32).numpy(), source):
            raise CheckpointError(
                f"{path}: {name} differs from {tied[name]}, but the config ties them "
                "(set tie_word_embeddings=false to use a separate head)"
            )


def save(model, save_dir, safe_serialization=True, max_shard_size=None, state_dict=None):
    """Write config.json and the weights (model.safetensors by default, model_state.pdparams on request), with
    PaddleNLP's names, so that PaddleNLP's own classes load the directory too. ``state_dict`` replaces the model's
    own parameters (a merged LoRA model's, say)."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    state = dict(model.state_dict() if state_dict is None else state_dict)
    quantization = getattr(model, "quantization", None)
    if quantization is None:  # the copy is for PaddleNLP's classes, which cannot load a quantized checkpoint anyway
        for copy, source in model.arch.tied_copies(model.config).items():
            state[copy] = state[source].T.contiguous()
    save_state_dict(state, save_dir, safe_serialization=safe_serialization, max_shard_size=max_shard_size)
    # The float dtype as stored: the embedding's, or with quantized token tables the norms' (quant/format.py).
    stored = state.get(model.arch.embedding, next((v for k, v in state.items() if "norm" in k), None))
    stored = str(stored.dtype).replace("paddle.", "")
    model.config.dtype = "bfloat16" if stored == "uint16" else stored  # numpy carries bf16 as its bits
    model.config.architectures = [type(model).__name__]
    config = json.loads(model.config.to_json_string())
    if quantization is not None:  # see quant/format.py
        config["quantization_config"] = quantization.to_dict()
    write_json(save_dir / CONFIG_NAME, config)
