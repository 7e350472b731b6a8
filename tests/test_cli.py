"""The `paddle-belle` command line: the installed console script, and cli.main in-process."""
import os
import shutil
import subprocess
import sys

import pytest

from paddle_belle import __version__


def run_cli(*args):
    exe = shutil.which("paddle-belle", path=os.path.dirname(sys.executable))
    assert exe, "paddle-belle is not installed next to this Python (pip install -e '.[cpu,test]')"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"paddle-belle {__version__}"


def test_help():
    out = run_cli("--help")
    assert out.returncode == 0 and "BELLE" in out.stdout and "usage: paddle-belle" in out.stdout


def test_unknown_command_fails_clearly():
    out = run_cli("frobnicate")
    assert out.returncode == 2 and "invalid choice: 'frobnicate'" in out.stderr


def test_no_command_prints_the_help(capsys):
    from paddle_belle import cli

    assert cli.main([]) == 0
    assert capsys.readouterr().out.startswith("usage: paddle-belle [-h] [--version] COMMAND ...")


def test_input_file_needs_output_file(capsys):
    from paddle_belle import cli

    with pytest.raises(SystemExit) as stop:  # a usage error, before any model is loaded
        cli.main(["generate", "--model", "no-such-model", "--input-file", "in.jsonl"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "paddle-belle: error: --input-file needs --output-file"


def test_every_option_is_named_after_the_keyword_it_feeds():
    """Handlers pass their options on by name (cli.options), so a library keyword renamed without its flag's dest
    would silently stop reaching the library: each dest must be a parameter of a callable its command feeds, or
    one that its handler uses itself."""
    import argparse
    import inspect

    from paddle_belle import cli
    from paddle_belle.api import make_client
    from paddle_belle.cards import build_card, write_card
    from paddle_belle.cards.render import apply_overrides
    from paddle_belle.chat import ChatSession, generate_batch, generate_file
    from paddle_belle.convert import convert
    from paddle_belle.convert.gguf import convert_gguf
    from paddle_belle.datagen.self_instruct import self_instruct
    from paddle_belle.evaluate.judge import evaluate
    from paddle_belle.evaluate.perplexity import perplexity_of_file
    from paddle_belle.models.base import CausalLM
    from paddle_belle.presets import GenerationConfig
    from paddle_belle.quant.estimate import format_estimate
    from paddle_belle.quant.format import QuantConfig
    from paddle_belle.quant.quantize import quantize_checkpoint
    from paddle_belle.serve import serve
    from paddle_belle.train import load_config, merge_lora

    load = (CausalLM.from_pretrained, GenerationConfig)  # --threads; --seed, --max-new-tokens via **overrides
    feeds = {  # command: (the callables its options are passed to by name, the dests that are not)
        "convert": ((convert, convert_gguf), {"format", "from_gguf"}),  # --format: safe_serialization
        "quantize": ((QuantConfig, quantize_checkpoint, format_estimate), {"model", "out", "estimate"}),
        "perplexity": ((perplexity_of_file,), {"model", "json"}),
        "chat": ((ChatSession, *load), {"model"}),
        "generate": ((generate_batch, generate_file, *load), {"model", "prompt", "input_file", "output_file"}),
        "train": ((load_config,), set()),
        "merge-lora": ((merge_lora,), set()),
        "serve": ((serve,), {"seed"}),  # --seed, one of the model options, is not used: requests bring theirs
        "datagen self-instruct": ((make_client, self_instruct), set()),
        "eval": ((make_client, evaluate, *load), {"model", "judge_base_url", "out", "seed"}),  # seed: not used
        "card": ((build_card, apply_overrides, write_card), set()),  # apply_overrides: build_card's **overrides
        "models": ((), set()),
    }
    assert [name for name, _, _ in cli.COMMANDS] == list(feeds)
    for name, run, _ in cli.COMMANDS:
        parser = argparse.ArgumentParser()
        for add in getattr(run, "arguments", []):
            add(parser)
        dests = {a.dest for a in parser._actions if a.dest != "help"}
        callables, own = feeds[name]
        assert own <= dests, name
        accepted = {n for f in callables for n, p in inspect.signature(f).parameters.items()
                    if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        assert dests - own <= accepted, f"{name}: no parameter named {sorted(dests - own - accepted)}"


def test_generate_refuses_to_overwrite_the_output_file_without_force(tmp_path, capsys):
    from paddle_belle import cli

    (tmp_path / "in.jsonl").write_text('{"prompt": "你好"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("earlier results\n", encoding="utf-8")
    argv = ["generate", "--model", str(tmp_path / "no-such-model"), "--input-file", str(tmp_path / "in.jsonl"),
            "--output-file", str(out)]
    assert cli.main(argv) == 1  # refused before the model is looked for
    assert capsys.readouterr().err.strip() == f"paddle-belle generate: error: {out} exists (use --force to replace it)"
    assert out.read_text(encoding="utf-8") == "earlier results\n"
    assert cli.main([*argv, "--force"]) == 1  # now it gets as far as the (missing) model
    assert "no-such-model" in capsys.readouterr().err
