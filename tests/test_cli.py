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
    assert capsys.readouterr().out.startswith("usage: paddle-belle [-h] [--version] [-v] COMMAND ...")


def test_verbose_before_or_after_the_command():
    from paddle_belle import cli

    parse = cli.build_parser().parse_args
    assert parse(["--verbose", "models"]).verbose and parse(["models", "-v"]).verbose
    assert not parse(["models"]).verbose


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
    from paddle_belle.convert.decrypt import decrypt
    from paddle_belle.convert.gguf import convert_gguf, export_gguf
    from paddle_belle.convert.gptq import convert_gptq
    from paddle_belle.datagen.self_instruct import self_instruct
    from paddle_belle.evaluate.judge import evaluate
    from paddle_belle.evaluate.perplexity import perplexity_of_file
    from paddle_belle.evaluate.report_page import write_report_page
    from paddle_belle.models.base import CausalLM
    from paddle_belle.presets import GenerationConfig
    from paddle_belle.quant.estimate import format_estimate
    from paddle_belle.quant.format import QuantConfig
    from paddle_belle.quant.quantize import quantize_checkpoint
    from paddle_belle.serve import serve
    from paddle_belle.train import load_config, merge_lora
    from paddle_belle.train.plot import write_loss_png

    load = (CausalLM.from_pretrained, GenerationConfig)  # --threads; --seed, --top-k, ... via **overrides
    feeds = {  # command: (the callables its options are passed to by name, the dests that are not)
        "convert": ((convert, convert_gguf, convert_gptq, export_gguf), {"format", "from_gguf", "from_gptq", "verify"}),  # --format: safe_serialization
        "decrypt": ((decrypt,), set()),
        "quantize": ((QuantConfig, quantize_checkpoint, format_estimate), {"model", "out", "estimate"}),
        "perplexity": ((perplexity_of_file,), {"model", "json"}),
        "chat": ((ChatSession, *load), {"model"}),
        "generate": ((generate_batch, generate_file, *load), {"model", "prompt", "input_file", "output_file"}),
        "train": ((load_config,), set()),
        "plot-loss": ((write_loss_png,), set()),
        "merge-lora": ((merge_lora,), set()),
        "serve": ((serve, GenerationConfig), set()),  # sampling flags: serve(**overrides), the requests' defaults
        "datagen self-instruct": ((make_client, self_instruct), set()),
        "eval": ((make_client, evaluate, *load), {"model", "judge_base_url", "out"}),
        "eval-report": ((write_report_page,), {"dirs"}),
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


@pytest.mark.parametrize("flag, value, message", [
    ("--top-k", "-3", "argument --top-k: must be a whole number >= 0 (0: off), not -3"),
    ("--top-p", "1.5", "argument --top-p: must be in (0, 1] (1: off), not 1.5"),
    ("--temperature", "-1", "argument --temperature: must be >= 0, not -1.0"),
    ("--repetition-penalty", "0", "argument --repetition-penalty: must be > 0 (1: off), not 0.0"),
    ("--max-new-tokens", "0", "argument --max-new-tokens: must be a whole number >= 1, not 0"),
    ("--top-k", "many", "argument --top-k: invalid int value: 'many'"),
])
@pytest.mark.parametrize("command", ["chat", "generate", "serve", "eval"])
def test_sampling_flags_are_checked_before_the_model_loads(command, flag, value, message, capsys):
    from paddle_belle import cli

    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--model", "no-such-model", flag, value, "--prompt", "hi", "--judge-model", "j"][
            : 5 + 2 * (command == "generate") + 2 * (command == "eval")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"paddle-belle {command}: error: {message}"


def test_sampling_flags_override_the_preset(monkeypatch, capsys):
    """--temperature 0 is greedy (OpenAI's convention, as the server's requests); each flag reaches the library."""
    import paddle_belle.evaluate.judge
    import paddle_belle.evaluate.report_page
    import paddle_belle.serve
    from paddle_belle import cli

    flags = ["--temperature", "0", "--top-k", "5", "--top-p", "0.5", "--repetition-penalty", "1.1",
             "--max-new-tokens", "7"]
    expected = dict(do_sample=False, temperature=1.0, top_k=5, top_p=0.5, repetition_penalty=1.1, max_new_tokens=7)
    seen = {}
    monkeypatch.setattr(paddle_belle.serve, "serve", lambda model, **kw: seen.update(serve=kw))
    monkeypatch.setattr(paddle_belle.evaluate.judge, "evaluate", lambda *a, **kw: seen.update(eval=kw) or dict(
        scored=0, unscored=0, not_judged=0, overall_mean=None, score_wo_others=None))
    monkeypatch.setattr(paddle_belle.api, "make_client", lambda *a, **kw: None)
    monkeypatch.setattr(paddle_belle.evaluate.report_page, "load_runs", lambda dirs: [])  # nothing was judged
    monkeypatch.setattr(paddle_belle.evaluate.report_page, "write_report_page", lambda *a: None)
    assert cli.main(["serve", *flags]) == 0
    assert cli.main(["eval", "--judge-model", "j", "--seed", "3", *flags]) == 0
    assert seen["serve"].items() >= expected.items() and seen["eval"].items() >= {**expected, "seed": 3}.items()
    from paddle_belle.presets import make_config
    from paddle_belle.serve.engine import defaults

    assert defaults("belle-card", 2048, **seen["serve"]) == make_config("belle-card", **expected)
    monkeypatch.undo()  # the real serve: a default reply over the cap is refused before the model is looked for
    assert cli.main(["serve", "--model", "no-such-model", "--max-new-tokens", "4096"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == ("paddle-belle serve: error: the default reply length (4096 "
                                                        "tokens, --max-new-tokens or the preset's) is over --max-tokens (2048)")


def test_generate_with_flags_equals_the_greedy_preset(capsys):
    """The bundled model, in-process: the flags change what is generated, not only what the library is given."""
    from paddle_belle import cli

    assert cli.main(["generate", "--prompt", "你好", "--temperature", "0", "--max-new-tokens", "6"]) == 0
    flagged = capsys.readouterr().out
    assert cli.main(["generate", "--prompt", "你好", "--preset", "greedy", "--repetition-penalty", "1.2",
                     "--max-new-tokens", "6"]) == 0  # belle-card's penalty, greedy
    assert capsys.readouterr().out == flagged


def test_models_lists_small_counts_readably():
    from paddle_belle.registry import format_count

    assert [format_count(n) for n in (7_069_016_064, 4_718_848, 350_000, 12)] == ["7.07B", "4.7M", "350K", "12"]
    out = subprocess.run([sys.executable, "-m", "paddle_belle.cli", "models"], capture_output=True, text=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("belle-tiny-zh "))
    assert line.split()[6] == "4.7M"  # was 0.00B


def test_a_mistyped_model_name_gets_a_suggestion(capsys):
    from paddle_belle import cli

    assert cli.main(["chat", "--model", "belle-7b-2n"]) == 1
    assert capsys.readouterr().err.strip() == (
        "paddle-belle chat: error: 'belle-7b-2n' is neither a local directory nor a model name like 'org/name' "
        "(did you mean belle-7b-2m? `paddle-belle models` lists the short names)")


def test_chat_commands_are_not_sent_to_the_model(monkeypatch, capsys):
    import io

    from paddle_belle import cli

    monkeypatch.setattr("sys.stdin", io.StringIO("/help\n/frobnicate now\n//\n/quit\n你好\n"))
    assert cli.main(["chat", "--preset", "greedy", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "/reset  forget the conversation so far" in out and "(also /quit" in out
    assert "unknown command /frobnicate; /help lists the commands" in out
    assert out.count("Assistant: ") == 1  # "//" sent "/"; /quit ended the session before 你好


@pytest.mark.parametrize("argv, message", [
    (["generate", "--prompt", "hi", "--batch-size", "0"], "argument --batch-size: must be >= 1, not 0"),
    (["chat", "--seed", "-1"], "argument --seed: must be a whole number >= 0, not -1"),
    (["quantize", "--model", "m", "--out", "o", "--bits", "5"], "argument --bits: invalid choice: 5 (choose from 2, 3, 4, 8)"),
    (["serve", "--max-concurrency", "0"], "argument --max-concurrency: must be >= 1, not 0"),
    (["chat", "--threads", "0"], "argument --threads: must be >= 1, not 0"),
])
def test_bad_numbers_are_usage_errors_naming_the_flag_before_any_import(argv, message):
    """Before: --batch-size 0 was "range() arg 3 must not be zero" after the model loaded, --seed -1 numpy's error
    without the flag, --bits 5 refused only after importing Paddle (~4 s)."""
    code = f"import sys\nfrom paddle_belle import cli\ntry:\n    cli.main({argv!r})\nexcept SystemExit as e:\n" \
           "    print(e.code, 'paddle' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stderr[-2000:]
    assert out.stderr.splitlines()[-1] == f"paddle-belle {argv[0]}: error: {message}"


def test_bits_choices_are_the_formats():
    from paddle_belle import cli
    from paddle_belle.quant.format import BITS

    parser = cli.build_parser()
    quantize = parser._subparsers._group_actions[0].choices["quantize"]
    assert next(a for a in quantize._actions if a.dest == "bits").choices == list(BITS)
