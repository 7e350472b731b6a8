"""Supervised fine-tuning (full or LoRA) of our models on BELLE data with PaddleNLP's Trainer.

One entry point for one process or many: under ``python -m paddle.distributed.launch`` PaddleNLP's
TrainingArguments sets up the process group (NCCL, XCCL, gloo on CPU: whatever the device has) and the Trainer
shards the data; data parallel, sharding stage 1/2/3 and tensor parallel are TrainingArguments settings.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import paddle
from paddlenlp.data import DataCollatorForSeq2Seq
from paddlenlp.peft import LoRAConfig, LoRAModel
from paddlenlp.trainer import PdArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed
from paddlenlp.trainer.trainer_utils import get_last_checkpoint, has_length

from paddle_belle import checkpoint, hub
from paddle_belle.auto import AutoModelForCausalLM
from paddle_belle.checkpoint import CheckpointError, atomic_dir, read_pdparams, write_json
from paddle_belle.data import IGNORE, build_dataset
from paddle_belle.generation import prepare_tokenizer
from paddle_belle.tokenizer import AutoTokenizer
from paddle_belle.train.config import TrainConfig
from paddle_belle.train.plot import LOSS_LOG, write_loss_png


class LossLog(TrainerCallback):
    """Appends every logged loss (and learning rate, tokens/s), and every evaluation's held-out loss, to
    output_dir/loss_log.jsonl on the main process."""

    def __init__(self, path: Path):
        self.path = path
        self.tokens = 0
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            elapsed = time.perf_counter() - self.start
            record = {"step": state.global_step, "epoch": logs.get("progress_or_epoch"), "loss": logs["loss"],
                      "learning_rate": logs.get("learning_rate"),
                      "tokens_per_second": round(self.tokens / elapsed, 1) if elapsed else None}
        elif "eval_loss" in logs:
            record = {"step": state.global_step, "epoch": logs.get("epoch"), "eval_loss": logs["eval_loss"]}
        else:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class RestoreRngOnResume(TrainerCallback):
    """PaddleNLP 2.8.1 restores the checkpoint's RNG states only after skipping batches inside an epoch, so a run
    resumed exactly at an epoch boundary draws other dropout masks than the unbroken run. This restores them as
    the first resumed epoch begins (again harmless when PaddleNLP does it later)."""

    def __init__(self, trainer, checkpoint):
        self.trainer, self.checkpoint = trainer, checkpoint

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.checkpoint is not None:
            self.trainer._load_rng_state(self.checkpoint)
            self.checkpoint = None


class BelleTrainer(Trainer):
    """PaddleNLP's Trainer, counting tokens for the loss log and resuming from our safetensors checkpoints."""

    def training_step(self, model, inputs):
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, LossLog):
                # != 0: packed rows number their samples in the mask
                tokens = int((inputs["attention_mask"] != 0).sum())
                callback.tokens += tokens * max(self.args.dataset_world_size, 1)
        return super().training_step(model, inputs)

    def _save_checkpoint(self, model, metrics=None):
        super()._save_checkpoint(model, metrics)
        # PaddleNLP 2.8.1 (trainer/trainer.py, Trainer._save_checkpoint) rotates checkpoints only when
        # `args.local_rank == 0`, and a process not started by paddle.distributed.launch has local_rank -1: one
        # process kept every checkpoint, optimizer state included, whatever save_total_limit said. Sorted by step,
        # not by mtime (PaddleNLP's choice), which a coarse file-system clock can tie.
        if self.args.local_rank == -1 and self.args.should_save:
            self._rotate_checkpoints(use_mtime=False, output_dir=self.args.output_dir)

    def _get_train_sampler(self):
        # PaddleNLP 2.8.1 shuffles a single process's data with the global NumPy RNG, drawn before a resumed run
        # restores that RNG: the resumed epoch then sees another order than the unbroken run. The distributed
        # sampler (used with several processes anyway) shuffles by epoch number, the same in both.
        if self.train_dataset is None or not has_length(self.train_dataset) or self.args.world_size > 1:
            return super()._get_train_sampler()
        return paddle.io.DistributedBatchSampler(self.train_dataset, self.args.per_device_train_batch_size,
                                                 num_replicas=1, rank=0, shuffle=True,
                                                 drop_last=self.args.dataloader_drop_last)

    def _load_from_checkpoint(self, resume_from_checkpoint=None):
        # PaddleNLP 2.8.1 resumes only from model_state.pdparams (an unpickled file); a full model saved by
        # save_pretrained (model.safetensors, see models/base.py) is loaded with our strict, pickle-free reader.
        path = Path(resume_from_checkpoint) if isinstance(resume_from_checkpoint, (str, Path)) else None
        plain = path and not isinstance(self.model, LoRAModel) and any(path.glob("model*.safetensors"))
        if plain and not self.args.should_load_sharding_stage1_model:
            self.model.load_weights(path)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint)


def training_arguments(config: TrainConfig) -> TrainingArguments:
    options = dict(config.training)
    device = paddle.get_device()
    if options.get("bf16") == "auto":  # bf16 where the device has it (never on CPU), O2 keeps fp32 master weights
        options["bf16"] = device != "cpu" and paddle.amp.is_bfloat16_supported(device)
        options.setdefault("fp16_opt_level", "O2")
    if device == "cpu":  # Paddle's CPU kernels have no half-precision matmul
        options["bf16"] = options["fp16"] = False
    # Tensor, pipeline and sequence-parallel ranks share a batch; the rest (plain or sharded) each take their own.
    # Computed before TrainingArguments is built, because it derives pipeline settings from the accumulation.
    shared = 1
    for key in ("tensor_parallel_degree", "pipeline_parallel_degree", "sep_parallel_degree"):
        shared *= max(int(options.get(key) or 1), 1)
    data_parallel = max(paddle.distributed.get_world_size() // shared, 1)
    options["gradient_accumulation_steps"] = global_batch_accumulation(
        config.global_batch_size, options.get("per_device_train_batch_size", 8), data_parallel,
        options.get("gradient_accumulation_steps"))
    (args,) = PdArgumentParser(TrainingArguments).parse_dict(options)
    if max(args.dataset_world_size, 1) != data_parallel:
        raise RuntimeError(f"data-parallel degree {data_parallel} expected, PaddleNLP set {args.dataset_world_size}")
    return args


def global_batch_accumulation(global_batch: int | None, per_device: int, data_parallel: int,
                              accumulation: int | None) -> int:
    """The gradient accumulation that makes per-device batch x accumulation x data-parallel degree equal the
    configured global batch; an accumulation given too must agree."""
    per_step = per_device * data_parallel
    if global_batch is None:
        return accumulation or 1
    if accumulation is None:
        if global_batch % per_step:
            raise ValueError(f"global_batch_size {global_batch} is not a multiple of per-device batch {per_device} x "
                             f"data-parallel degree {data_parallel}")
        return global_batch // per_step
    if per_step * accumulation != global_batch:
        raise ValueError(f"per-device batch {per_device} x accumulation {accumulation} x data-parallel degree "
                         f"{data_parallel} = {per_step * accumulation}, not global_batch_size {global_batch}")
    return accumulation


def check_trainable(model: str) -> None:
    """Refuse a quantized checkpoint: its QuantLinears hold integer codes that get no gradients, so a run would
    train only the float parameters around them (embeddings, norms) and report success."""
    config_file = hub.resolve(model) / checkpoint.CONFIG_NAME
    if config_file.is_file() and "quantization_config" in checkpoint.read_config(config_file.parent):
        raise ValueError(f"{config_file}: a quantized checkpoint (quantization_config) cannot be trained, its integer "
                         "weights get no gradients; train the float checkpoint it was made from")


def load_model(config: TrainConfig, args: TrainingArguments):
    dtype = config.dtype
    if dtype == "auto":
        dtype = "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype)
    # Recorded in config.json (of every checkpoint, and of a LoRA adapter, which saves the base's config): chat,
    # serve, eval and card then prompt the model as it was trained (prompts.recorded_style).
    model.config.prompt_style = config.style
    if config.lora:
        settings = config.lora
        targets = settings.target_modules or list(model.arch.lora_targets)
        lora_config = LoRAConfig(target_modules=targets, r=settings.r, lora_alpha=settings.lora_alpha,
                                 lora_dropout=settings.lora_dropout, trainable_modules=settings.trainable_modules,
                                 dtype=dtype,
                                 tensor_parallel_degree=args.tensor_parallel_degree)
        model = LoRAModel(model, lora_config)
        model.mark_only_lora_as_trainable()
    model.train()
    return model


def train(config: TrainConfig, callbacks=()):
    """Run the configured training; returns the Trainer (its model holds the trained weights). ``callbacks``
    are extra PaddleNLP TrainerCallbacks."""
    check_trainable(config.model)
    args = training_arguments(config)
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    prepare_tokenizer(tokenizer, padding_side=None)  # a pad token; training keeps the tokenizer's padding side
    if config.streaming and args.max_steps <= 0:
        raise ValueError("streaming data has no length: set training.max_steps")
    train_set, summary = build_dataset(config.train_data, tokenizer, config.style, config.max_length,
                                       config.skip_bad, config.streaming, config.packing)
    eval_set = None
    if config.eval_data:
        eval_set, _ = build_dataset(config.eval_data, tokenizer, config.style, config.max_length, config.skip_bad)
    if summary is not None and args.process_index == 0:
        print(f"training data: {summary}", flush=True)
    if summary is not None and summary.samples == 0:
        raise ValueError("no training sample left (see the summary above)")

    # Fresh names for parameters and optimizer state (embedding_0.w_0_moment1_0, ...) however many models this
    # process built before: the optimizer state is saved under them and a resumed run must find the same names.
    with paddle.utils.unique_name.guard():
        set_seed(args.seed)  # before the model: a LoRA adapter's initial A is random
        model = load_model(config, args)
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, return_tensors="pd")
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        trainer = BelleTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                               data_collator=collator, tokenizer=tokenizer,
                               callbacks=[LossLog(output_dir / LOSS_LOG), *callbacks])
        resume = args.resume_from_checkpoint
        if resume is True or resume == "last":
            resume = get_last_checkpoint(args.output_dir)  # None: nothing to resume, start afresh
        if resume:
            trainer.add_callback(RestoreRngOnResume(trainer, resume))
        result = trainer.train(resume_from_checkpoint=resume)
    if args.process_index == 0:
        print(f"trained {result.global_step} steps in {result.metrics['train_runtime']:.1f} s, mean loss "
              f"{result.training_loss:.4f}", flush=True)
    trainer.save_model()  # the final weights (or LoRA adapter) and the tokenizer, as from_pretrained reads them
    if eval_set is not None:
        trainer.evaluate()
    if args.process_index == 0:
        write_loss_png(output_dir)
    # End together: a rank exiting while another still writes can abort gloo (observed in ~28 two-process CPU runs).
    if paddle.distributed.get_world_size() > 1:
        paddle.distributed.barrier()
    return trainer


def merge_lora(base: str, adapter: str | Path, out: str | Path) -> Path:
    """Fold a LoRA adapter (lora_config.json + lora_model_state.pdparams, as training saves it) into the weights
    of ``base`` and write a plain checkpoint that from_pretrained loads without peft."""
    adapter, out = Path(adapter), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory")
    for name in ("lora_config.json", "lora_model_state.pdparams"):
        if not (adapter / name).is_file():
            raise FileNotFoundError(f"{adapter}: no {name} (is this a LoRA adapter directory?)")
    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32")
    if (adapter / checkpoint.CONFIG_NAME).is_file():  # the prompt style the adapter was trained in (load_model)
        style = checkpoint.read_config(adapter).get("prompt_style")
        if style:
            model.config.prompt_style = style
    lora_config = LoRAConfig.from_pretrained(str(adapter))
    lora_config.merge_weights = True  # else eval() keeps adding B·A at run time and the weights stay unmerged
    lora = LoRAModel(model, lora_config)
    # The adapter is read by our restricted unpickler: numpy arrays only, never arbitrary objects.
    weights = read_pdparams(adapter / "lora_model_state.pdparams")
    params = lora.model.state_dict()
    # The adapter's matrices, and any layer trained in full beside them (lora.trainable_modules).
    missing = sorted(name for name in params if "lora_" in name and name not in weights)
    unexpected = sorted(set(weights) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"{adapter}: the adapter does not fit {base}: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    for name, array in weights.items():
        if list(array.shape) != list(params[name].shape):
            raise CheckpointError(f"{adapter}: {name} has shape {list(array.shape)}, expected {params[name].shape}")
        params[name].set_value(paddle.to_tensor(array, dtype=params[name].dtype))
    # eval() adds B·A·scale into each base weight (with merge_weights). restore_original_model() would instead
    # rebuild the plain Linears from the unmerged weights and lose the adapter (PaddleNLP peft/lora/lora_model.py).
    lora.eval()
    merged = {name: p for name, p in lora.model.state_dict().items() if "lora_" not in name}
    with atomic_dir(out) as staging:
        model.save_pretrained(staging, state_dict=merged)
        source = hub.resolve(base)
        for name in checkpoint.TOKENIZER_FILES:  # tokenizer.json too: some LLaMA tokenizers are only that
            for directory in (adapter, source):
                if directory is not None and (directory / name).is_file():
                    shutil.copy2(directory / name, staging / name)
                    break
        write_json(staging / "merge_info.json", {"base": str(base), "adapter": str(adapter)})
    return out
