"""BELLE's judge-scored eval: a tiny model answers, a scripted judge on 127.0.0.1 scores through the openai client."""
import json
import signal
import subprocess
import time

import pytest
from reference import tiny_belle_dir
from servers import BelleServer, ScriptedOpenAI, cli_path, free_port

from paddle_belle import jsonl
from paddle_belle.evaluate.judge import load_eval_set, load_judge_prompts, normalize_class, parse_score, report


@pytest.mark.parametrize("reply, score", [
    ("得分: 0.8\n理由：回答正确。", 0.8), ("得分：1", 1.0), ("**得分**：0.5", 0.5), ("得分:0.5分", 0.5),
    ("得分为0.7", 0.7), ("最终得分是 1。", 1.0), ("得分: 8/10", 0.8), ("分数：80%", 0.8), ("得分：０.９", 0.9),
    ("初步得分: 0.2，但考虑到步骤正确，最终得分: 0.6", 0.6), ("得分 ：0", 0.0),
])
def test_parse_score(reply, score):
    assert parse_score(reply) == (pytest.approx(score), None)


@pytest.mark.parametrize("reply", ["回答基本正确，但不够完整。", "得分：满分", "得分: 2", "满分为1分", "", "得分: 3/0"])
def test_unscored_replies(reply):
    value, why = parse_score(reply)
    assert value is None and why


def test_shipped_files_and_class_names():
    assert normalize_class("closed\xa0QA") == normalize_class("closed qa") == normalize_class(" Closed  QA ") == "closed qa"
    questions, prompts = load_eval_set(), load_judge_prompts()
    assert len(questions) == 1000 and {q["class"] for q in questions} <= set(prompts)
    assert {"closed qa", "open qa"} <= {q["class"] for q in questions}


# class, question, reference, the judge's scripted reply
CASES = [
    ("math", "计算 12 加 30 等于多少？", "42", "得分: 1\n理由：结果正确。"),
    ("math", "一个正方形边长 3 厘米，面积是多少？", "9平方厘米", "模型回答错误。得分：0"),
    ("code", "写一个 Python 函数返回两数之和。", "def add(a, b): return a + b", "得分：0.5"),
    ("closed\xa0qa", "根据下文回答：小明有几只猫？小明养了两只猫。", "两只", "**得分**：0.9"),
    ("closed\xa0qa", "根据下文回答：会议在哪天？会议定于周三举行。", "周三", "得分为0.7分，基本正确。"),
    ("open qa", "中国的首都是哪里？", "北京", "得分: 8/10"),
    ("open qa", "地球到月球的平均距离是多少？", "约38万公里", "我认为这个回答尚可，但缺少细节。"),  # no score
    ("generation", "写一句关于春天的诗。", "春风又绿江南岸", "得分：1\n理由：通顺。"),
    ("generation", "为咖啡店写一句广告语。", "醒来，从一杯好咖啡开始", "回答一般。最终得分是 0.6"),
    ("brainstorming", "列出三种锻炼身体的方法。", "跑步、游泳、骑车", "得分: 0.3"),
    ("rewrite", "把这句话改得更正式：我们明天见。", "期待明日与您会面。", "得分：１"),
    ("translation", "把“你好”翻译成英文。", "Hello", "得分: 2"),  # outside 0..1: unscored
]
# hand-computed from the replies above
PER_CLASS = {"math": 0.5, "code": 0.5, "closed qa": 0.8, "open qa": 0.8, "generation": 0.8, "brainstorming": 0.3,
             "rewrite": 1.0, "translation": None}
OVERALL = (1 + 0 + 0.5 + 0.9 + 0.7 + 0.8 + 1 + 0.6 + 0.3 + 1) / 10
WO_OTHERS = (0.8 + 0.8 + 0.8 + 0.3 + 1.0) / 5


def test_report_arithmetic():
    judged = [{"class": normalize_class(c), "score": parse_score(r)[0]} for c, _, _, r in CASES]
    rep = report(judged)
    assert {k: v["mean"] for k, v in rep["per_class"].items()} == pytest.approx(PER_CLASS)
    assert rep["overall_mean"] == pytest.approx(OVERALL) and rep["score_wo_others"] == pytest.approx(WO_OTHERS)
    assert (rep["scored"], rep["unscored"]) == (10, 2) and rep["per_class"]["open qa"]["unscored"] == 1


class Judge:
    def __init__(self):
        self.by_question = {q: r for _, q, _, r in CASES}

    def __call__(self, body):
        text = body["messages"][0]["content"]
        return next(r for q, r in self.by_question.items() if q in text)


def run_eval(model_dir, out, eval_set, url, *args):
    return [cli_path(), "eval", "--model", str(model_dir), "--judge-model", "judge", "--judge-base-url", url,
            "--eval-set", str(eval_set), "--out", str(out), "--max-new-tokens", "8", "--batch-size", "4",
            "--threads", "1", *map(str, args)]


def test_eval_end_to_end_with_kill_and_restart(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_belle_dir(model_dir)
    eval_set = tmp_path / "eval_set.json"
    eval_set.write_text("".join(json.dumps({"question": q, "class": c, "std_answer": a}, ensure_ascii=False) + "\n"
                                for c, q, a, _ in CASES), encoding="utf-8")
    out = tmp_path / "out"
    judge = ScriptedOpenAI(Judge(), delay=0.4)
    try:
        proc = subprocess.Popen(run_eval(model_dir, out, eval_set, judge.url, "--workers", 1),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        judged_path = out / "judged.jsonl"
        deadline = time.monotonic() + 180
        while (not judged_path.exists() or judged_path.read_text(encoding="utf-8").count("\n") < 3) \
                and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = jsonl.load(judged_path)
        answers = jsonl.read(out / "answers.jsonl")
        assert 3 <= len(first) < len(CASES) and len(answers) == len(CASES)

        judge.delay = 0
        r = subprocess.run(run_eval(model_dir, out, eval_set, judge.url, "--workers", 3), capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "10 scored, 2 unscored, 0 not judged" in r.stdout
        # nothing judged before the kill was judged again; everything else exactly once after it
        asked = [next(q for _, q, _, _ in CASES if q in b["messages"][0]["content"]) for b in judge.requests]
        before = {rec["question"] for rec in first}
        assert all(asked.count(q) == 1 for q in before)
        assert {q for q in asked} == {q for _, q, _, _ in CASES}
        assert jsonl.read(out / "answers.jsonl") == answers  # answers were not redone either

        judged = jsonl.read(judged_path)
        assert sorted(rec["id"] for rec in judged) == list(range(len(CASES)))
        rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
        assert {k: v["mean"] for k, v in rep["per_class"].items()} == pytest.approx(PER_CLASS)
        assert rep["overall_mean"] == pytest.approx(OVERALL) and rep["score_wo_others"] == pytest.approx(WO_OTHERS)
        assert "Score_w/o_others" in (out / "report.md").read_text(encoding="utf-8")
        page = (out / "report.html").read_text(encoding="utf-8")  # rendered in a browser by tests/evaluate
        assert page.count("<tr data-class=") == len(CASES) and page.count('<rect class="bar"') == 7

        # BELLE's judge requests: the class's prompt, the reference except for generation/brainstorming/rewrite
        prompts = load_judge_prompts()
        for body in judge.requests:
            text = body["messages"][0]["content"]
            c, q, a, _ = next(case for case in CASES if case[1] in text)
            assert text.startswith(prompts[normalize_class(c)] + " " + q) and body["temperature"] == 0
            assert ("标准回答:" + a in text) == (c not in ("generation", "brainstorming", "rewrite"))
            assert text.endswith("'。请针对模型回答给出得分，顺便给出理由：")

        n = len(judge.requests)
        again = subprocess.run(run_eval(model_dir, out, eval_set, judge.url), capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0 and len(judge.requests) == n  # complete: no request at all
    finally:
        judge.stop()


def write_eval_set(path, cases):
    path.write_text("".join(json.dumps({"question": q, "class": c, "std_answer": a}, ensure_ascii=False) + "\n"
                            for c, q, a in cases), encoding="utf-8")


def test_an_unusable_judge_is_found_before_answering(tmp_path):
    eval_set, out = tmp_path / "eval_set.json", tmp_path / "out"
    write_eval_set(eval_set, [c[:3] for c in CASES[:2]])
    # no model is loaded and no question answered: a judge that cannot be used fails the run first, in one line
    url = f"http://127.0.0.1:{free_port()}/v1"
    r = subprocess.run(run_eval(tmp_path / "no-model", out, eval_set, url), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith(f"paddle-belle eval: error: cannot reach {url}")
    assert not out.exists()

    judge = ScriptedOpenAI(Judge())
    try:
        judge.models_fault = 401
        r = subprocess.run(run_eval(tmp_path / "no-model", out, eval_set, judge.url, "--judge-api-key", "sk-judge"),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and judge.model_lists == ["Bearer sk-judge"]
        assert r.stderr.splitlines()[-1] == (f"paddle-belle eval: error: {judge.url}: it refused the API key (401); "
                                             f"pass the judge's key with --judge-api-key or set OPENAI_API_KEY")
        assert not out.exists()
    finally:
        judge.stop()


def test_judged_by_our_own_server_out_of_the_box(tmp_path):
    """`paddle-belle serve` as it comes (the bundled belle-tiny-zh, context 2048) as the judge: a judge prompt of
    ~1250 tokens leaves no room for the default --judge-max-tokens 1024, so the request is sent again with the
    max_tokens that fits (it was a 400 and the answer was not judged)."""
    model_dir = tmp_path / "tiny"
    tiny_belle_dir(model_dir)
    long_reference = "".join(q["std_answer"] for q in load_eval_set() if q["class"] == "open qa")[:1600]
    eval_set, out = tmp_path / "eval_set.json", tmp_path / "out"
    write_eval_set(eval_set, [("open qa", "中国的首都是哪里？", long_reference), ("math", "1+1等于几？", "2")])
    server = BelleServer("belle-tiny-zh", "--served-model-name", "belle-tiny")
    try:
        cmd = run_eval(model_dir, out, eval_set, server.url + "/v1")
        cmd[cmd.index("--judge-model") + 1] = "belle-tiny"
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert ", 0 not judged" in r.stdout and server.health()["completed"] == 2  # its replies are noise: unscored
    finally:
        server.stop()
