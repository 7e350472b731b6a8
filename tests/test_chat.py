"""The belle-7b-2m card snippet, the chat REPL over pipes, and batch generation from JSONL."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from reference import tiny_belle_dir

from paddle_belle import AutoTokenizer
from paddle_belle.chat import ChatSession

# The card's code (huggingface.co/BelleGroup/BELLE-7B-2M), with only its import line changed.
CARD = '''
from paddle_belle import AutoTokenizer, AutoModelForCausalLM
import sys

model_path = "./" # You can modify the path for storing the local model
model =  AutoModelForCausalLM.from_pretrained(model_path)
tokenizer = AutoTokenizer.from_pretrained(model_path)
print("Human:")
line = input()
while line:
        inputs = 'Human: ' + line.strip() + '\\n\\nAssistant:'
        input_ids = tokenizer(inputs, return_tensors="pt").input_ids
        outputs = model.generate(input_ids, max_new_tokens=200, do_sample = True, top_k = 30, top_p = 0.85, temperature = 0.35, repetition_penalty=1.2)
        rets = tokenizer.batch_decode(outputs, skip_special_tokens=True)
        print("Assistant:\\n" + rets[0].strip().replace(inputs, ""))
        print("\\n------------------------------------------------\\nHuman:")
        line = input()
'''


@pytest.fixture(scope="module")
def belle_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("belle")
    tiny_belle_dir(d)
    return d


def cli(*args, stdin=""):
    exe = shutil.which("paddle-belle", path=os.path.dirname(sys.executable))
    return subprocess.run([exe, *map(str, args)], input=stdin, capture_output=True, text=True, timeout=300)


def test_card_snippet_runs(belle_dir):
    script = belle_dir / "card.py"
    script.write_text(CARD)
    out = subprocess.run([sys.executable, str(script)], cwd=belle_dir, input="你好，请介绍一下你自己\n\n",
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "To copy construct" not in out.stderr  # generate() took the tokenizer's Tensor through paddle.to_tensor
    reply = out.stdout.split("Assistant:\n", 1)[1].split("\n------")[0]
    assert reply.strip() and "Human:" not in reply.split("\n")[0]


def test_chat_repl_over_pipes(belle_dir):
    out = cli("chat", "--model", belle_dir, "--preset", "greedy", stdin="你好\n数学题：1+1=?\n/reset\n再见\n/exit\n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("Assistant: ") == 3 and "(history cleared)" in out.stdout
    assert out.stdout.rstrip().endswith("Human:")  # the prompt of the /exit line


def test_plain_chat_shows_only_the_conversation():
    """The bundled model on a CPU, one piped question: no library warnings (Paddle's "No ccache found", setuptools'
    and jieba's pkg_resources ones) and no INFO/DEBUG log lines (Paddle gave the root logger an INFO handler);
    --verbose shows them."""
    out = cli("chat", "--seed", "0", stdin="你好\n")
    assert out.returncode == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0].startswith("paddle-belle chat: belle-tiny-zh (") and lines[1].startswith("Human: Assistant: ")
    assert lines[-1] == "Human: " and not any(w in out.stdout for w in ("Warning", "INFO]", "DEBUG]"))


def test_session_remembers_turns_and_honours_max_history(belle_dir):
    from paddle_belle import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(belle_dir)
    tok = AutoTokenizer.from_pretrained(belle_dir)
    session = ChatSession(model, tok, preset="greedy", max_new_tokens=8)
    first = "".join(session.ask("你好"))
    assert session.history == [("你好", first.strip())]
    "".join(session.ask("再见"))
    assert [q for q, _ in session.history] == ["你好", "再见"]
    forgetful = ChatSession(model, tok, preset="greedy", max_new_tokens=8, max_history=0)
    a = "".join(forgetful.ask("数学题"))
    "".join(forgetful.ask("你好"))
    assert "".join(forgetful.ask("数学题")) == a  # no history in the prompt: the same question, the same answer


def test_generate_file_reports_bad_lines_and_writes_the_rest(belle_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "你好"}\nnot json\n{"instruction": "把下面的话翻译成英语", "input": "今天天气很好"}\n'
                   '{"other": 1}\n', encoding="utf-8")
    out = cli("generate", "--model", belle_dir, "--input-file", src, "--output-file", tmp_path / "out.jsonl",
              "--preset", "greedy", "--batch-size", "2")
    assert out.returncode == 1
    assert "in.jsonl:2: bad JSON" in out.stderr and "in.jsonl:4: ValueError: needs a \"prompt\"" in out.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r.get("prompt", r.get("instruction")) for r in rows] == ["你好", "把下面的话翻译成英语"]
    assert all(isinstance(r["output"], str) for r in rows)
    one = cli("generate", "--model", belle_dir, "--prompt", "你好", "--preset", "greedy")
    assert one.returncode == 0 and one.stdout.strip() == rows[0]["output"]


def test_the_recorded_prompt_style_is_the_default_everywhere(belle_dir, tmp_path, monkeypatch):
    from paddle_belle import AutoModelForCausalLM, prompts
    from paddle_belle.chat import generate_batch
    from paddle_belle.evaluate.judge import answer_questions
    from paddle_belle.serve.engine import Engine

    recorded = tmp_path / "recorded"
    shutil.copytree(belle_dir, recorded)
    config = json.loads((recorded / "config.json").read_text())
    (recorded / "config.json").write_text(json.dumps({**config, "prompt_style": "belle-v2"}))
    tok = AutoTokenizer.from_pretrained(belle_dir)
    rendered = []
    render = prompts.render
    monkeypatch.setattr(prompts, "render", lambda style, *a, **k: rendered.append(style) or render(style, *a, **k))
    for directory, style in ((belle_dir, "belle"), (recorded, "belle-v2")):  # no record: belle, as before
        model = AutoModelForCausalLM.from_pretrained(directory)
        assert ChatSession(model, tok).style == Engine(model, tok).style == style
        assert ChatSession(model, tok, style="belle").style == "belle"  # an explicit style wins
        rendered.clear()
        generate_batch(model, tok, ["你好"], preset="greedy", max_new_tokens=2)
        answer_questions(model, tok, [{"id": 1, "class": "qa", "question": "你好"}], tmp_path / f"{style}.jsonl",
                         preset="greedy", max_new_tokens=2)
        assert rendered == [style, style]
    out = cli("chat", "--model", recorded, "--preset", "greedy", stdin="/exit\n")
    assert out.returncode == 0 and "(style belle-v2, preset greedy)" in out.stdout, out.stderr[-2000:]
    bad = tmp_path / "bad"
    shutil.copytree(recorded, bad)
    (bad / "config.json").write_text(json.dumps({**config, "prompt_style": "alpaca"}))
    out = cli("chat", "--model", bad, stdin="/exit\n")
    assert out.returncode == 1 and "unknown prompt style 'alpaca'" in out.stderr.strip().splitlines()[-1]
