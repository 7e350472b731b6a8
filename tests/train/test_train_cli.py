"""`paddle-belle train` and `paddle-belle merge-lora` as a user runs them, on the shipped tiny configs."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
from reference import tiny_llama_dir
from test_cli import run_cli

from paddle_belle import AutoModelForCausalLM

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "fixtures" / "belle" / "school_math_40.jsonl"


def test_lora_train_then_merge_lora_on_the_command_line(tmp_path):
    tiny_llama_dir(tmp_path / "base", hidden_size=64, std=0.02)
    out = run_cli("train", str(ROOT / "configs" / "sft" / "tiny-cpu-lora.yaml"), "--model", str(tmp_path / "base"),
                  "--train-data", str(DATA), "--training.output_dir", str(tmp_path / "adapter"),
                  "--training.num_train_epochs", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "training data: 40 records: 0 malformed skipped" in out.stdout
    assert f"saved to {tmp_path / 'adapter'}" in out.stdout
    assert "TrainProcess" in out.stderr  # the progress bar
    log = [json.loads(line) for line in (tmp_path / "adapter" / "loss_log.jsonl").read_text().splitlines()]
    assert len(log) >= 4 and all(r["loss"] > 0 and r["tokens_per_second"] > 0 for r in log)

    out = run_cli("merge-lora", str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "merged"))
    assert out.returncode == 0, out.stderr[-3000:]
    # the style the config trained in (belle-v2) is recorded with the adapter and the merged model
    for directory in ("adapter", "merged"):
        assert json.loads((tmp_path / directory / "config.json").read_text())["prompt_style"] == "belle-v2"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    ids = paddle.to_tensor([[1, 40, 50, 60]])
    with paddle.no_grad():
        assert not np.allclose(merged(ids).logits.numpy(), base(ids).logits.numpy())
    again = run_cli("merge-lora", str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "merged"))
    assert again.returncode == 1 and "exists; choose a new directory" in again.stderr


def test_a_bad_record_stops_training_with_file_and_line_unless_skipped(tmp_path):
    tiny_llama_dir(tmp_path / "base", hidden_size=64, std=0.02)
    data = tmp_path / "data.jsonl"
    lines = DATA.read_text(encoding="utf-8").splitlines()[:8]
    lines[2] = '{"instruction": "1+1=?", "input": "", "output": ["2"]}'
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    common = [str(ROOT / "configs" / "sft" / "tiny-cpu.yaml"), "--model", str(tmp_path / "base"), "--train_data",
              str(data), "--training.output_dir", str(tmp_path / "out"), "--training.num_train_epochs", "1"]
    out = run_cli("train", *common)
    assert out.returncode == 1
    assert f"paddle-belle train: error: {data}:3: field 'output' must be a string, not list" in out.stderr
    out = run_cli("train", *common, "--skip-bad", "--packing", "--max-length", "2048")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "training data: 8 records: 1 malformed skipped" in out.stdout
    rows = int(out.stdout.split("packed into ")[1].split()[0])
    assert 1 <= rows < 7  # 7 samples of a few hundred tokens share 2048-token rows


def test_an_empty_training_file_is_named(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    out = run_cli("train", str(ROOT / "configs" / "sft" / "tiny-cpu.yaml"), "--train_data", str(empty),
                  "--training.output_dir", str(tmp_path / "out"))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == f"paddle-belle train: error: {empty}: no records (the file is empty)"


def test_a_quantized_checkpoint_is_refused(tmp_path):
    from paddle_belle.quant.format import QuantConfig
    from paddle_belle.quant.quantize import quantize_checkpoint

    tiny_llama_dir(tmp_path / "base", hidden_size=64, std=0.02)
    quantize_checkpoint(tmp_path / "base", tmp_path / "q8", QuantConfig(bits=8, group_size=16, method="rtn"))
    out = run_cli("train", str(ROOT / "configs" / "sft" / "tiny-cpu.yaml"), "--model", str(tmp_path / "q8"),
                  "--training.output_dir", str(tmp_path / "out"))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"paddle-belle train: error: {tmp_path / 'q8' / 'config.json'}: a quantized checkpoint (quantization_config) "
        "cannot be trained, its integer weights get no gradients; train the float checkpoint it was made from")
    assert not (tmp_path / "out").exists()


def test_the_training_output_chats_and_its_card_lists_only_the_model_files(tmp_path):
    tiny_llama_dir(tmp_path / "base", hidden_size=64, std=0.02)
    out = tmp_path / "out"
    trained = run_cli("train", str(ROOT / "configs" / "sft" / "tiny-cpu.yaml"), "--model", str(tmp_path / "base"),
                      "--training.output_dir", str(out), "--training.num_train_epochs", "1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (out / "sentencepiece.bpe.model").is_file() and list(out.glob("checkpoint-*/optimizer.pdopt"))
    exe = shutil.which("paddle-belle", path=str(Path(sys.executable).parent))
    chat = subprocess.run([exe, "chat", "--model", str(out), "--seed", "1"], input="你好\n/exit\n",
                          capture_output=True, text=True, timeout=120)
    assert chat.returncode == 0 and "Assistant: " in chat.stdout, chat.stderr[-3000:]
    assert "(style belle-v2, " in chat.stdout  # the style tiny-cpu.yaml trains in, recorded in config.json
    card = run_cli("card", "--model", str(out), "--out", str(out / "README.md"))
    assert card.returncode == 0, card.stderr[-3000:]
    text = (out / "README.md").read_text(encoding="utf-8")
    listed = [line.split("|")[1].strip() for line in text.split("## Files")[1].split("## ")[0].splitlines()
              if line.startswith("| ") and not line.startswith(("| file", "| **total"))]
    assert "model.safetensors" in listed and "sentencepiece.bpe.model" in listed
    assert f"paddle-belle chat --model {out} --style belle-v2" in text and "Human: \n{input}\n\nAssistant: \n" in text
    assert (out / "loss.png").is_file()
    records = ("training_args.bin", "loss_log.jsonl", "loss.png")
    assert not [name for name in listed if "/" in name or name in records], listed


def test_train_prints_a_progress_bar_and_a_summary_and_the_library_logs_only_when_verbose(tmp_path):
    tiny_llama_dir(tmp_path / "base", hidden_size=64, std=0.02)
    exe = shutil.which("paddle-belle", path=str(Path(sys.executable).parent))
    env = {k: v for k, v in os.environ.items() if k != "GLOG_minloglevel"}  # as a user runs it
    outputs = {}
    for verbose in ([], ["--verbose"]):
        out = subprocess.run([exe, *verbose, "train", str(ROOT / "configs" / "sft" / "tiny-cpu.yaml"), "--model",
                              str(tmp_path / "base"), "--training.output_dir", str(tmp_path / f"out{len(verbose)}"),
                              "--training.num_train_epochs", "1"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        outputs[bool(verbose)] = out
    quiet = outputs[False]
    noise = [line for line in quiet.stderr.replace("\r", "\n").splitlines()
             if re.search(r"\[ *(DEBUG|INFO|WARNING)\]|Warning:|^\s*warnings\.warn|^\s*import ", line)]
    assert not noise, noise
    assert "TrainProcess" in quiet.stderr  # the progress bar
    lines = quiet.stdout.splitlines()
    assert lines[0].startswith("training data: 40 records") and lines[1].startswith("trained 5 steps in ")
    assert lines[2:] == [f"saved to {tmp_path / 'out0'}"]
    assert "Training Configuration Arguments" in outputs[True].stderr  # PaddleNLP's DEBUG lines, when verbose
