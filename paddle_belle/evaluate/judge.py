"""BELLE's judge-scored evaluation: a model answers BELLE's 1000 eval questions, a judge model (GPT-4/ChatGPT in
BELLE, any OpenAI-compatible endpoint here) scores each answer from 0 to 1 with BELLE's per-class prompt.

Two resumable stages in ``--out``: ``answers.jsonl`` (the model's answers) and ``judged.jsonl`` (each answer with
the judge's reply and its score); then ``report.json`` and ``report.md``. A rerun answers and judges only what is
missing; a question whose judging failed is reported and left for the next run.

The judge prompt is BELLE's (eval/template_html/ChatGPT_Score.html.temp): the class's prompt, the question, the
reference answer (except for generation, brainstorming and rewrite, which have no single right answer), the model's
answer, and "请针对模型回答给出得分，顺便给出理由：". The judge is asked for temperature 0, as BELLE did.
"""
from __future__ import annotations

import re
import sys
import unicodedata
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from tqdm.auto import tqdm

from paddle_belle import jsonl
from paddle_belle.api import check_endpoint, create_within
from paddle_belle.checkpoint import atomic_path, write_json
from paddle_belle.data_files import EVAL_PROMPTS, EVAL_SET

NO_REFERENCE = {"generation", "brainstorming", "rewrite"}  # judged without the reference answer (BELLE)
NOT_IN_SCORE_WO_OTHERS = {"math", "code"}  # BELLE's Score_w/o_others leaves these out


def normalize_class(name: str) -> str:
    """One spelling per class: eval_prompt.json says "closed QA" / "open QA", eval_set.json "closed\\xa0qa" (a
    no-break space) / "open qa"."""
    return " ".join(name.replace("\xa0", " ").split()).lower()


def load_eval_set(path=EVAL_SET) -> list[dict]:
    """Questions as {"id", "class", "question", "std_answer"}; ``id`` is the 0-based position in the file."""
    records = []
    for i, r in enumerate(jsonl.read(path, "question")):
        if not all(isinstance(r.get(k), str) for k in ("question", "class", "std_answer")):
            raise ValueError(f"{path}: question {i + 1}: needs \"question\", \"class\" and \"std_answer\" strings")
        records.append({"id": i, "class": normalize_class(r["class"]), "question": r["question"],
                        "std_answer": r["std_answer"]})
    return records


def load_judge_prompts(path=EVAL_PROMPTS) -> dict[str, str]:
    prompts = {}
    for n, r in enumerate(jsonl.read(path, "judge prompt"), 1):
        if not isinstance(r.get("class"), str) or not isinstance(r.get("prompt"), str):
            raise ValueError(f"{path}:{n}: needs \"class\" and \"prompt\" strings")
        prompts[normalize_class(r["class"])] = r["prompt"]
    return prompts


def judge_prompt(prompt: str, record: dict, answer: str) -> str:
    """BELLE's judge request, spacing and quotes as in its template."""
    if record["class"] in NO_REFERENCE:
        return f"{prompt} {record['question']}  模型回答： '{answer}'。请针对模型回答给出得分，顺便给出理由："
    return (f"{prompt} {record['question']} 标准回答:{record['std_answer']}  模型回答：' {answer}'。"
            f"请针对模型回答给出得分，顺便给出理由：")


# "得分: 0.8", "得分：1分", "**得分**：0.5", "得分为0.7", "最终得分是 1", "得分: 8/10", "分数: 80%"
_SCORE = re.compile(r"(?:得分|分数)\s*\**\s*(?::|为|是)?\s*\**\s*([0-9]+(?:\.[0-9]+)?)\s*(%|/\s*([0-9]+(?:\.[0-9]+)?))?")


def parse_score(reply: str) -> tuple[float | None, str | None]:
    """(score in [0, 1], None), or (None, why) when the reply gives no usable score. The last score given counts:
    judges that reconsider put their final word at the end."""
    text = unicodedata.normalize("NFKC", reply or "")  # full-width colons and digits
    matches = list(_SCORE.finditer(text))
    if not matches:
        return None, "no 得分 in the judge's reply"
    m = matches[-1]
    value = float(m.group(1))
    if m.group(2) == "%":
        value /= 100
    elif m.group(3) is not None:
        denominator = float(m.group(3))
        if denominator == 0:
            return None, f"score {m.group(0)!r} divides by zero"
        value /= denominator
    if not 0 <= value <= 1:
        return None, f"score {m.group(0).strip()!r} is outside 0..1"
    return value, None


def report(judged: list[dict]) -> dict:
    """Per-class means over the scored answers; ``overall_mean`` over every scored answer; ``class_mean`` the
    mean of the class means; ``score_wo_others`` the mean of the class means without math and code (BELLE's
    Score_w/o_others). Unscored answers count in ``unscored``, never as 0."""
    classes = {}
    for r in judged:
        c = classes.setdefault(r["class"], {"questions": 0, "scored": 0, "unscored": 0, "total": 0.0})
        c["questions"] += 1
        if r["score"] is None:
            c["unscored"] += 1
        else:
            c["scored"] += 1
            c["total"] += r["score"]
    per_class = {}
    for name in sorted(classes):
        c = classes[name]
        per_class[name] = {"questions": c["questions"], "scored": c["scored"], "unscored": c["unscored"],
                           "mean": c["total"] / c["scored"] if c["scored"] else None}
    scores = [r["score"] for r in judged if r["score"] is not None]

    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else None

    means = {k: v["mean"] for k, v in per_class.items() if v["mean"] is not None}
    return {"questions": len(judged), "scored": len(scores), "unscored": len(judged) - len(scores),
            "overall_mean": mean(scores), "class_mean": mean(means.values()),
            "score_wo_others": mean(v for k, v in means.items() if k not in NOT_IN_SCORE_WO_OTHERS),
            "per_class": per_class}


def report_markdown(rep: dict, title: str) -> str:
    def f(x):
        return "–" if x is None else f"{x:.3f}"

    lines = [f"# {title}", "", "| class | questions | scored | unscored | mean score |", "|---|---|---|---|---|"]
    for name, c in rep["per_class"].items():
        lines.append(f"| {name} | {c['questions']} | {c['scored']} | {c['unscored']} | {f(c['mean'])} |")
    lines += ["", f"- overall mean (over {rep['scored']} scored answers): {f(rep['overall_mean'])}",
              f"- mean of the class means: {f(rep['class_mean'])}",
              f"- Score_w/o_others (class means without math and code): {f(rep['score_wo_others'])}",
              f"- unscored answers (no usable 得分 in the judge's reply): {rep['unscored']}", ""]
    return "\n".join(lines)


FATAL = ("AuthenticationError", "PermissionDeniedError", "NotFoundError")  # retrying cannot help


def answer_questions(model, tokenizer, questions: list[dict], path, style=None, preset="belle-eval",
                     batch_size=8, **overrides) -> None:
    """Append the model's answer to every question not yet in ``path`` (``style`` None: the model's recorded one),
    each as soon as it is written: the questions are answered by continuous batching over ``batch_size`` rows."""
    from paddle_belle.chat import answer_all

    with jsonl.Appender(path) as out:
        replies = answer_all(model, tokenizer, [q["question"] for q in questions], style=style, preset=preset,
                             batch_size=batch_size, **overrides)
        for i, answer in tqdm(replies, total=len(questions), desc="answering", unit="answer", disable=None):
            if isinstance(answer, Exception):
                raise answer
            q = questions[i]
            out.append({"id": q["id"], "class": q["class"], "question": q["question"], "answer": answer})


def judge_answers(client, judge_model: str, todo: list[dict], prompts: dict[str, str], path, workers=4,
                  max_tokens=1024, context=None) -> int:
    """Judge every answer in ``todo`` (records with question, std_answer, answer), appending to ``path``.
    Returns the number that failed (reported on stderr, left for the next run). ``context``: the judge's, when its
    server reports it; a request over it is sent again with a max_tokens that fits (api.create_within)."""

    def judge(record):
        request = judge_prompt(prompts[record["class"]], record, record["answer"])
        r = create_within(client.chat.completions.create, context, max_tokens, model=judge_model,
                          messages=[{"role": "user", "content": request}], temperature=0)
        choices = getattr(r, "choices", None)
        if not choices or not isinstance(choices[0].message.content, str):
            raise ValueError("malformed response: no reply text")
        return choices[0].message.content

    failed = 0
    with jsonl.Appender(path) as out, ThreadPoolExecutor(max(1, workers)) as pool:
        bar = tqdm(total=len(todo), desc="judging", unit="answer", disable=None)
        queue, pending = list(reversed(todo)), {}
        try:
            while queue or pending:
                while queue and len(pending) < max(1, workers):
                    record = queue.pop()
                    pending[pool.submit(judge, record)] = record
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    record = pending.pop(future)
                    try:
                        reply = future.result()
                    except Exception as e:  # noqa: BLE001 - reported with its question
                        message = f"question {record['id']} ({record['class']}): {type(e).__name__}: {e}"
                        if type(e).__name__ in FATAL:
                            raise RuntimeError(f"judge: {message}") from None
                        tqdm.write(f"eval: judge failed on {message}", file=sys.stderr)
                        failed += 1
                        continue
                    score, why = parse_score(reply)
                    out.append({**record, "judge_model": judge_model, "judge_reply": reply, "score": score,
                                **({"unscored": why} if why else {})})
                    bar.update(1)
        finally:
            for future in pending:
                future.cancel()
            bar.close()
    return failed


def evaluate(load_model, client, judge_model: str, out_dir, eval_set=None, judge_prompts=None, limit=None,
             style=None, preset="belle-eval", batch_size=8, workers=4, judge_max_tokens=1024,
             **overrides) -> dict:
    """The whole evaluation into ``out_dir``; returns the report. ``load_model()`` gives (model, tokenizer) and
    is only called if some question still needs its answer, and after the judge was found usable
    (api.check_endpoint) if some answer still needs judging."""
    eval_set, judge_prompts = eval_set or EVAL_SET, judge_prompts or EVAL_PROMPTS
    questions = load_eval_set(eval_set)[:limit]
    prompts = load_judge_prompts(judge_prompts)
    missing = sorted({q["class"] for q in questions} - set(prompts))
    if missing:
        raise ValueError(f"{judge_prompts}: no judge prompt for class(es) {', '.join(missing)} of {eval_set}")
    out_dir = Path(out_dir)
    by_id = {q["id"]: q for q in questions}

    answers_path, judged_path = out_dir / "answers.jsonl", out_dir / "judged.jsonl"
    judged = {r["id"]: r for r in _load_own(judged_path, by_id)}
    # a judge that cannot be used is found now, not after answering (hours on a CPU)
    context = check_endpoint(client, judge_model) if len(judged) < len(by_id) else None
    out_dir.mkdir(parents=True, exist_ok=True)
    answered = {r["id"]: r for r in _load_own(answers_path, by_id)}
    todo = [q for q in questions if q["id"] not in answered]
    if todo:
        model, tokenizer = load_model()
        answer_questions(model, tokenizer, todo, answers_path, style=style, preset=preset, batch_size=batch_size,
                         **overrides)
        answered = {r["id"]: r for r in _load_own(answers_path, by_id)}

    todo = [{**by_id[i], "answer": answered[i]["answer"]} for i in by_id if i not in judged]
    failed = judge_answers(client, judge_model, todo, prompts, judged_path, workers, judge_max_tokens,
                           context) if todo else 0
    judged = {r["id"]: r for r in _load_own(judged_path, by_id)}

    rep = report([judged[i] for i in by_id if i in judged])
    rep.update(judge_model=judge_model, not_judged=len(by_id) - len(judged), eval_set=str(eval_set))
    write_json(out_dir / "report.json", rep)
    with atomic_path(out_dir / "report.md") as tmp:
        Path(tmp).write_text(report_markdown(rep, f"BELLE eval, judged by {judge_model}"), encoding="utf-8")
    if failed:
        print(f"eval: {failed} answer(s) not judged (see above); run again to retry them", file=sys.stderr)
    return rep


def _load_own(path, by_id) -> list[dict]:
    """The records of a stage file that belong to this evaluation (a --limit run may share its directory)."""
    records = jsonl.load(path)
    for n, r in enumerate(records, 1):
        if not isinstance(r.get("id"), int):
            raise ValueError(f"{path}: record {n} has no integer \"id\"")
        if r["id"] in by_id and r.get("question") != by_id[r["id"]]["question"]:
            raise ValueError(f"{path}: record {n} answers another question than question {r['id']} of this eval "
                             f"set; use a new --out for another eval set")
    return [r for r in records if r["id"] in by_id]
