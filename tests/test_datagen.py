"""BELLE's self-instruct through the real openai client: parsing and filters, a fault-injecting endpoint, a kill and
restart, and our own server on a tiny model."""
import itertools
import os
import signal
import subprocess
import threading
import time

import pytest
from reference import tiny_belle_dir
from servers import BelleServer, ScriptedOpenAI, cli_path, free_port

from paddle_belle import jsonl
from paddle_belle.data_files import EVAL_SET
from paddle_belle.datagen.self_instruct import (
    NearDuplicates,
    encode_prompt,
    load_prompt,
    load_seed_tasks,
    parse_response,
)

SEEDS = load_seed_tasks()


def item(n, instruction, inp="", output="好的。"):
    return f"{n}. 指令: {instruction}\n{n}. 输入:\n{inp or '<无输入>'}\n{n}. 输出:\n{output}\n"


def test_prompt_is_belles_format():
    p = encode_prompt(load_prompt(), SEEDS[:3])
    assert "\\n" not in p and p.startswith("你被要求提供10个多样化的任务指令") and p.endswith("###\n4. 指令:")
    assert f"###\n2. 指令: {SEEDS[1]['instruction']}\n2. 输入:\n{SEEDS[1]['input'] or '<无输入>'}\n2. 输出:\n" in p


def test_parse_applies_belles_filters():
    reply = "###".join([
        " 列举三种常见的水果\n4. 输入:\n<无输入>\n4. 输出:\n苹果、香蕉、橙子\n",  # continues the prompt's "4. 指令:"
        item(5, "把下面的句子翻译成英文", "今天天气很好。", "The weather is nice today."),
        item(6, "描述这张图片里的内容"),  # blacklist: 图片
        item(7, "要求GPT模型能够解释什么是光合作用", output="植物利用光能合成有机物。"),  # self-reference removed
        item(8, "GPT是什么意思"),  # still mentions GPT
        item(9, "写诗"),  # too short
        item(10, "总结下面这段话" + "的要点" * 40, "一段话"),  # > 100 characters with an input
        item(11, "参考下面的例子写一句话" + "啊" * 110, "例子"),  # giving examples: up to 150 allowed
        item(12, "翻译成法语", "你好", "") ,  # no output
        item(13, "说出中国的首都") + "14. 指令: 说出法国的首都\n14. 输入:\n<无输入>\n14. 输出:\n巴黎",  # no ### between
        item(15, "这一条被截断了", "", "半句"),
    ])
    records, dropped = parse_response(reply, "length")
    assert [r["instruction"] for r in records] == [
        "列举三种常见的水果", "把下面的句子翻译成英文", "解释什么是光合作用", "参考下面的例子写一句话" + "啊" * 110, "说出中国的首都"]
    assert records[0] == {"instruction": "列举三种常见的水果", "input": "", "output": "苹果、香蕉、橙子"}
    assert records[1]["input"] == "今天天气很好。" and records[-1]["output"] == "好的。"
    assert dropped == 6
    # the same reply finished normally keeps its last item
    assert parse_response(reply, "stop")[0][-1]["instruction"] == "这一条被截断了"


def test_growing_bm25_scores_equal_a_rebuild():
    from rank_bm25 import BM25Okapi

    from paddle_belle.datagen.self_instruct import GrowingBM25

    d = NearDuplicates([t["instruction"] for t in SEEDS[:50]])
    grown = GrowingBM25(list(d.tokens))
    for t in SEEDS[50:80]:
        grown.add(d.tokenize(t["instruction"]))
    rebuilt = BM25Okapi(d.tokens + [d.tokenize(t["instruction"]) for t in SEEDS[50:80]])
    for t in SEEDS[::7]:
        q = d.tokenize(t["instruction"])
        assert grown.get_scores(q) == pytest.approx(rebuilt.get_scores(q), rel=1e-12)


def test_bm25_near_duplicates():
    d = NearDuplicates([t["instruction"] for t in SEEDS])
    assert d.scores(SEEDS[0]["instruction"]).max() > 18  # a seed again
    assert d.scores("列举三种常见的水果").max() < 18
    d.add("列举三种常见的水果")
    assert d.scores("列举三种常见的水果").max() > 18
    short = "回答以下问题。"  # a seed whose BM25 against itself stays under 18: an exact repeat is still a duplicate
    assert d.index.get_scores(d.tokenize(short)).max() < 18 and d.scores(" 回答以下问题。\n").max() > 18


# ---------------------------------------------------------------------------------------- scripted endpoint
def pool():
    """Distinct, realistic instructions: BELLE's eval questions (one line, no filtered words)."""
    out = []
    for r in jsonl.read(EVAL_SET):
        q = r["question"].strip()
        if "\n" not in q and 6 <= len(q) <= 60 and not any(w in q for w in ("图", "文件", "链接", "http", "GPT", "gpt", "照片", "指令",
                                                                                 "输入", "输出", "###", "例")):
            out.append(q)
    return out


class Tasks:
    """Replies of 10 new tasks each: 8 fresh ones, a seed task again, and one already sent (both near-duplicates)."""

    def __init__(self):
        self.fresh, self.sent, self.lock = iter(pool()), [], threading.Lock()

    def __call__(self, body):
        with self.lock:
            new = list(itertools.islice(self.fresh, 8))
            again = self.sent[-1] if self.sent else SEEDS[5]["instruction"]
            self.sent += new
        instructions = [SEEDS[len(self.sent) % len(SEEDS)]["instruction"], *new, again]
        text = " " + "###\n".join(item(4 + i, q, output=f"答案{i}") for i, q in enumerate(instructions))[len("4. 指令: "):]
        return text, "stop"


def datagen(out, url, *args, timeout=300, env=None):
    return subprocess.run([cli_path(), "datagen", "self-instruct", "--out", str(out), *(["--base-url", url] if url else []),
                           "--model", "m", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def check_records(records, n):
    instructions = [r["instruction"] for r in records]
    assert len(records) == n and len(set(instructions)) == n
    seeds = {t["instruction"] for t in SEEDS}
    assert not seeds & set(instructions)
    d = NearDuplicates(sorted(seeds))
    for r in records:  # each kept record was not a near-duplicate of the seeds or of anything kept before it
        assert d.scores(r["instruction"]).max() <= 18
        d.add(r["instruction"])
        assert r["output"].startswith("答案") and set(r) >= {"instruction", "input", "output", "avg_similarity_score"}


def test_faults_are_retried_or_reported(tmp_path):
    faults = [429, 500, "drop", None, "malformed", 429, 503, None]
    server = ScriptedOpenAI(Tasks(), faults=faults)
    try:
        out = tmp_path / "tasks.jsonl"
        r = datagen(out, server.url, "--num-instructions", 30, "--workers", 2, "--seed", 1)
        assert r.returncode == 0, r.stderr[-3000:]
        check_records(jsonl.read(out), 30)
        assert all(q.get("stop") and q["max_tokens"] == 1024 for q in server.requests)
        assert "ValueError: malformed response: no choices" in r.stderr  # reported with its request ...
        assert "seed tasks seed_task_" in r.stderr and "(1 failed)" in r.stdout  # ... the others were retried
        # a model that only repeats itself would keep the loop going forever: it stops, keeping what it has
        server.reply = lambda body: " " + item(4, SEEDS[0]["instruction"])[len("4. 指令: "):]
        r = datagen(out, server.url, "--num-instructions", 40)
        assert r.returncode == 1 and "50 replies in a row gave no new task" in r.stderr
        assert len(jsonl.read(out)) == 30
        # 4xx other than 408/409/429 are not retried: reported, and a refused key stops the run at once
        # (and OPENAI_BASE_URL / OPENAI_API_KEY are honoured)
        server.faults = [401]
        r = datagen(tmp_path / "other.jsonl", None, "--num-instructions", 5,
                    env={"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "sk-from-env"})
        assert r.returncode == 1 and "AuthenticationError" in r.stderr and "request 1 (seed tasks" in r.stderr
        assert server.requests[-1]["authorization"] == "Bearer sk-from-env"
    finally:
        server.stop()


def test_kill_and_restart_loses_and_duplicates_nothing(tmp_path):
    server = ScriptedOpenAI(Tasks(), delay=0.3)
    out = tmp_path / "tasks.jsonl"
    try:
        proc = subprocess.Popen([cli_path(), "datagen", "self-instruct", "--out", str(out), "--base-url", server.url,
                                 "--model", "m", "--num-instructions", "60", "--workers", "2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while (not out.exists() or out.read_text(encoding="utf-8").count("\n") < 12) and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = jsonl.load(out)
        assert 12 <= len(before) < 60
        with open(out, "a", encoding="utf-8") as f:  # as if killed in the middle of writing a record
            f.write('{"instruction": "写到一半')
        server.delay = 0
        r = datagen(out, server.url, "--num-instructions", 60, "--workers", 2)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "dropping an unfinished last line" in r.stderr and f"(+{len(before)} from before)" in r.stdout
        after = jsonl.read(out)
        assert after[: len(before)] == before
        check_records(after, 60)
        again = datagen(out, server.url, "--num-instructions", 60)  # already complete: no request at all
        assert again.returncode == 0 and "0 requests" in again.stdout and jsonl.read(out) == after
    finally:
        server.stop()


def test_against_our_own_server_out_of_the_box(tmp_path):
    # `paddle-belle serve` as it comes: the bundled belle-tiny-zh, BELLE's context of 2048 tokens. BELLE's prompt
    # takes 700-1750 of them with its tokenizer, so the default --max-tokens 1024 does not always fit: seed 1's first
    # request (1369 tokens) is sent again with the max_tokens that does (it was a failed request)
    server = BelleServer("belle-tiny-zh", "--served-model-name", "belle-tiny")
    try:
        for api in ("completion", "chat"):
            out = tmp_path / f"{api}.jsonl"
            r = datagen(out, server.url + "/v1", "--api", api, "--model", "belle-tiny", "--num-instructions", 5,
                        "--max-requests", 2, "--workers", 2, "--seed", 1)
            assert "2 requests (0 failed)" in r.stdout, r.stderr[-3000:]
            records = jsonl.load(out)  # the tiny model's text is noise: what is tested is the loop
            assert all({"instruction", "input", "output"} <= set(record) for record in records)
            # fewer records than asked for is a failure, whatever the reason
            assert r.returncode == (0 if len(records) == 5 else 1), r.stderr[-3000:]
        assert server.health()["completed"] == 4
    finally:
        server.stop()


def test_an_unusable_api_stops_the_run_at_once(tmp_path):
    out = tmp_path / "tasks.jsonl"
    # nothing listens: one line naming the URL, before any request is retried for minutes
    url = f"http://127.0.0.1:{free_port()}/v1"
    r = datagen(out, url, "--num-instructions", 5, "--max-requests", 2, "--max-retries", 0, timeout=60)
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith(f"paddle-belle datagen: error: cannot reach {url}")
    assert not out.exists()

    server = ScriptedOpenAI(lambda body: " " + item(4, "说出中国的首都")[len("4. 指令: "):])
    try:
        # a refused key: the message names where the key comes from; --api-key sends it
        server.models_fault = 401
        r = datagen(out, server.url, "--num-instructions", 5, "--api-key", "sk-flag")
        assert r.returncode == 1 and server.model_lists == ["Bearer sk-flag"] and not server.requests
        assert r.stderr.splitlines()[-1] == (f"paddle-belle datagen: error: {server.url}: it refused the API key (401); "
                                             f"pass the key with --api-key or set OPENAI_API_KEY")
        server.models_fault = None
        r = datagen(out, server.url, "--num-instructions", 5, "--model", "gpt-4")
        assert r.returncode == 1 and f"{server.url} does not serve model 'gpt-4' (it serves judge, m)" in r.stderr
        assert not server.requests

        # --max-requests reached short of the target: not a success
        r = datagen(out, server.url, "--num-instructions", 5, "--max-requests", 2)
        assert "2 requests (0 failed)" in r.stdout and len(jsonl.read(out)) == 1
        assert r.returncode == 1 and r.stderr.splitlines()[-1] == (
            f"paddle-belle datagen: error: {out} holds 1 of the 5 records asked for (--max-requests 2 reached)")
    finally:
        server.stop()
