"""BELLE's self-instruct: ask an OpenAI-compatible model for new tasks, shown 3 seed tasks at a time.

Follows BELLE's data/1.5M/generate_instruction.py: the prompt is prompt_cn.txt followed by 3 sampled seed tasks
numbered ``1. 指令/输入/输出`` between ``###`` lines and ``4. 指令:``; the reply is split at ``###`` and each item
parsed into instruction/input/output; BELLE's filters drop items about images/links/files or GPT itself, strip
phrases addressed to "GPT模型", and apply its length rules; the last item is dropped when the reply was cut by
max_tokens; near-duplicates are removed by BM25 over the instruction (score above 18 against the seeds or any
record kept so far).

Where this differs from BELLE, and why:
- BM25 tokens come from jieba, not bloomz-7b1's tokenizer (which BELLE downloaded from the HF hub): jieba ships
  with PaddleNLP and splits Chinese into words of about the same size, so the threshold 18 keeps its meaning
  roughly. BM25 itself is rank-bm25's BM25Okapi, the same formula and constants as the gensim BM25 BELLE used.
- prompt_cn.txt holds literal ``\\n`` pairs, which BELLE sent as they are; they are sent as real newlines here.
- items with an empty output are dropped: a task without its answer is no training data.
- output is appended record by record and reloaded on restart (BELLE rewrote one JSON file per request).
- an exact repeat of a known instruction is always a duplicate, whatever its BM25 score.
"""
from __future__ import annotations

import random
import re
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rank_bm25 import BM25Okapi
from tqdm.auto import tqdm

from paddle_belle import jsonl
from paddle_belle.api import check_endpoint, create_within
from paddle_belle.data_files import SEED_TASKS, SELF_INSTRUCT_PROMPT

# BELLE's filters (generate_instruction.py): tasks a text model cannot do, and mentions of the generator itself.
BLACKLIST = ["图像", "图片", "照片", "文件", "图表", "图层", "曲线图", "折线图", "直线图", "柱形图", "饼状图", "链接", "http",
             "OpenAI", "chatgpt", "gpt-3", "gpt-3.5", "gpt-4"]
# Phrases that address the instruction to "the GPT model"; removed from the instruction, longest first (BELLE went
# in list order, where "GPT模型应" comes before "GPT模型应该" and left a stray "该").
SELF_REFERENCES = sorted([
    "要求GPT模型能够", "要求GPT能够", "要求GPT模型", "让GPT模型", "使用GPT模型", "请向GPT模型", "GPT模型应", "GPT模型应该",
    "请求GPT模型", "需要GPT模型回答", "请GPT模型", "请让GPT模型", "训练GPT模型", "GPT模型需要", "要求GPT", "让GPT", "使用GPT",
    "请向GPT", "GPT应", "GPT应该", "请求GPT", "需要GPT回答", "请GPT", "请让GPT", "训练GPT", "GPT需要", "希望GPT模型能够",
    "希望GPT能够", "以便GPT模型能够", "以便GPT能够", "使得GPT模型能够", "使得GPT能够", "使GPT模型能够", "使GPT能够", "由GPT模型",
    "使GPT模型"], key=len, reverse=True)
STOP = ["\n20", "20.", "20."]  # BELLE's stop sequences (OpenAI allows up to 4)

_INSTRUCTION = re.compile(r"(?<=指令[:：])[\s\S]*?(?=输入[:：])")
_INPUT = re.compile(r"(?<=输入[:：])[\s\S]*?(?=输出[:：])")
_OUTPUT = re.compile(r"(?<=输出[:：])[\s\S]*?(?=$)")
_TRAILING_NUMBER = re.compile(r"\d+\.$")  # "2." left at the end of a field by the next item's numbering


def load_seed_tasks(path=SEED_TASKS) -> list[dict]:
    """BELLE's seed tasks (JSONL: instruction, instances[0].input/output) as instruction/input/output records."""
    tasks = []
    for n, t in enumerate(jsonl.read(path, "seed task"), 1):
        try:
            inst = t["instances"][0]
            tasks.append({"id": t.get("id", f"seed_{n}"), "instruction": str(t["instruction"]),
                          "input": str(inst["input"]), "output": str(inst["output"])})
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{path}: seed task {n}: needs \"instruction\" and \"instances\": "
                             f"[{{\"input\", \"output\"}}]") from None
    if len(tasks) < 3:
        raise ValueError(f"{path}: {len(tasks)} seed tasks; at least 3 are needed")
    return tasks


def load_prompt(path=SELF_INSTRUCT_PROMPT) -> str:
    return Path(path).read_text(encoding="utf-8").strip().replace("\\n", "\n")


def encode_prompt(prompt: str, tasks: list[dict]) -> str:
    """BELLE's encode_prompt: the request prompt, the tasks numbered 1..k, and the start of task k+1."""
    text = prompt + "\n"
    for i, t in enumerate(tasks, 1):
        instruction = re.sub(r"\s+", " ", t["instruction"]).strip().rstrip(":")
        text += f"###\n{i}. 指令: {instruction}\n{i}. 输入:\n{t['input'] or '<无输入>'}\n{i}. 输出:\n{t['output']}\n"
    return text + f"###\n{len(tasks) + 1}. 指令:"


def parse_response(text: str, finish_reason: str | None, num_prompt_tasks: int = 3) -> tuple[list[dict], int]:
    """(records that pass BELLE's filters, number of items dropped) from one reply."""
    if "指令:" not in text[:10] and "指令：" not in text[:10]:
        text = f"{num_prompt_tasks + 1}. 指令:" + text  # the reply continues the prompt's last, open item
    items = text.split("###")
    kept, dropped = [], 0
    for i, item in enumerate(items):
        record = None
        if not (i == len(items) - 1 and finish_reason == "length"):  # cut off by max_tokens
            record = _parse_item(item)
        if record is None:
            dropped += bool(item.strip())
        else:
            kept.append(record)
    return kept, dropped


def _parse_item(item: str) -> dict | None:
    if any(word in item for word in BLACKLIST):
        return None
    m_inst, m_input, m_output = _INSTRUCTION.search(item), _INPUT.search(item), _OUTPUT.search(item)
    if not (m_inst and m_input and m_output):
        return None
    instruction = _TRAILING_NUMBER.sub("", m_inst.group().strip()).strip("\n")
    inp = _TRAILING_NUMBER.sub("", m_input.group().strip()).strip("\n")
    inp = "" if "无输入" in inp else inp
    output = m_output.group().strip()
    if "指令:" in output and "输入:" in output and "输出:" in output:  # items not separated by ###: keep the first
        output = _TRAILING_NUMBER.sub("", output.split("指令:")[0].strip()).strip("\n")
    if len(instruction) <= 3:
        return None
    for phrase in SELF_REFERENCES:
        instruction = instruction.replace(phrase, "")
    if "GPT" in instruction or "GPT" in inp or not output:
        return None
    limit = 150 if ("示例" in instruction or "例子" in instruction) else 100  # an instruction giving examples is longer
    if inp and len(instruction) >= limit:
        return None
    return {"instruction": instruction, "input": inp, "output": output}


class GrowingBM25(BM25Okapi):
    """rank-bm25's BM25Okapi with ``add``: it updates the counts BM25Okapi's constructor computes and recomputes the
    idf table (linear in the vocabulary), where building anew is linear in the corpus and took ~0.1 s per record at
    5000 records. The scores equal a rebuild's (tested). Relies on BM25's attributes (rank-bm25 0.2.x)."""

    def _initialize(self, corpus):
        self.nd = super()._initialize(corpus)  # word -> number of documents containing it
        self.total_len = sum(self.doc_len)
        return self.nd

    def add(self, document: list[str]) -> None:
        freqs = {}
        for word in document:
            freqs[word] = freqs.get(word, 0) + 1
        self.doc_freqs.append(freqs)
        self.doc_len.append(len(document))
        self.corpus_size += 1
        self.total_len += len(document)
        self.avgdl = self.total_len / self.corpus_size
        for word in freqs:
            self.nd[word] = self.nd.get(word, 0) + 1
        self.idf = {}
        self._calc_idf(self.nd)


class NearDuplicates:
    """BM25 (rank-bm25's BM25Okapi) of a new instruction against every instruction known so far. ``scores`` of an
    exact repeat (whitespace aside) are +inf: BM25 of a short instruction against itself can stay under the
    threshold (BELLE's own seed "回答以下问题。" scores 12), and a repeat is never a new task."""

    def __init__(self, instructions: list[str], threshold: float = 18.0):
        import jieba

        jieba.setLogLevel(60)  # its "Building prefix dict" lines would break the progress bar
        self._cut = jieba.lcut
        self.threshold = threshold
        self.texts = list(instructions)
        self.tokens = [self.tokenize(t) for t in self.texts]
        self.seen = {self.key(t) for t in self.texts}
        self.index = GrowingBM25(self.tokens)

    @staticmethod
    def key(text: str) -> str:
        return "".join(text.split())

    def tokenize(self, text: str) -> list[str]:
        return [w for w in self._cut(text) if w.strip()]

    def scores(self, text: str) -> np.ndarray:
        scores = self.index.get_scores(self.tokenize(text))
        if self.key(text) in self.seen:
            scores[[i for i, t in enumerate(self.texts) if self.key(t) == self.key(text)]] = np.inf
        return scores

    def add(self, text: str) -> None:
        self.texts.append(text)
        self.seen.add(self.key(text))
        self.tokens.append(self.tokenize(text))
        self.index.add(self.tokens[-1])


@dataclass
class Stats:
    requests: int = 0
    failed: int = 0
    parsed: int = 0
    filtered: int = 0
    duplicates: int = 0
    kept: int = 0
    resumed: int = 0

    def line(self) -> str:
        return (f"{self.requests} requests ({self.failed} failed), {self.parsed} tasks parsed, {self.filtered} "
                f"filtered out, {self.duplicates} near-duplicates, {self.kept} kept"
                + (f" (+{self.resumed} from before)" if self.resumed else ""))


FATAL = ("AuthenticationError", "PermissionDeniedError", "NotFoundError")  # retrying cannot help
MAX_FAILURES_IN_A_ROW = 10
# Replies that keep nothing (all filtered or near-duplicates) would otherwise make the loop run forever.
MAX_BARREN_IN_A_ROW = 50


def self_instruct(out, client, model: str, num_instructions: int, api: str = "chat", seeds=SEED_TASKS,
                  prompt=SELF_INSTRUCT_PROMPT, workers: int = 1, num_prompt_tasks: int = 3, temperature: float = 1.0,
                  top_p: float = 1.0, max_tokens: int = 1024, threshold: float = 18.0, max_requests: int | None = None,
                  seed: int | None = None) -> Stats:
    """Generate until ``out`` (JSONL, appended to) holds ``num_instructions`` records, or ``max_requests`` were
    made. ``client``: an ``openai.OpenAI``; its own retries (``max_retries``, exponential backoff, Retry-After)
    handle rate limits, 5xx and dropped connections. The API is checked first (api.check_endpoint): one that
    cannot be reached, refuses the key or lacks the model stops the run before any request. A request that still
    fails is reported with the request and skipped; a refused key or unknown model stops the run."""
    if api not in ("chat", "completion"):
        raise ValueError(f"api must be 'chat' or 'completion', not {api!r}")
    seed_tasks, request_prompt = load_seed_tasks(seeds or SEED_TASKS), load_prompt(prompt or SELF_INSTRUCT_PROMPT)
    if num_prompt_tasks > len(seed_tasks):
        raise ValueError(f"{num_prompt_tasks} tasks per request, but only {len(seed_tasks)} seed tasks")
    done = jsonl.load(out)
    for n, r in enumerate(done, 1):
        if not isinstance(r.get("instruction"), str):
            raise ValueError(f"{out}:{n}: not a self-instruct record (no \"instruction\")")
    stats = Stats(resumed=len(done))
    # an API that cannot be used is found now, in one request, not after each request's retries
    context = check_endpoint(client, model) if len(done) < num_instructions else None
    dedup = NearDuplicates([t["instruction"] for t in seed_tasks] + [r["instruction"] for r in done], threshold)
    rng = random.Random(seed)

    def request(tasks):
        text = encode_prompt(request_prompt, tasks)
        # a request over the server's context is sent again with a max_tokens that fits (api.create_within)
        args = dict(model=model, temperature=temperature, top_p=top_p, stop=STOP)
        if api == "chat":
            r = create_within(client.chat.completions.create, context, max_tokens,
                              messages=[{"role": "user", "content": text}], **args)
        else:
            r = create_within(client.completions.create, context, max_tokens, prompt=text, **args)
        choices = getattr(r, "choices", None)
        if not choices:
            raise ValueError("malformed response: no choices")
        reply = choices[0].message.content if api == "chat" else choices[0].text
        if not isinstance(reply, str):
            raise ValueError("malformed response: no text in the first choice")
        return reply, choices[0].finish_reason

    bar = tqdm(total=num_instructions, initial=min(len(done), num_instructions), desc="self-instruct",
               unit="task", disable=None)
    failures_in_a_row = barren_in_a_row = 0
    with jsonl.Appender(out) as writer, ThreadPoolExecutor(max(1, workers)) as pool:
        pending = {}
        try:
            while len(done) < num_instructions:
                while len(pending) < max(1, workers) and (max_requests is None or stats.requests < max_requests):
                    tasks = rng.sample(seed_tasks, num_prompt_tasks)
                    stats.requests += 1
                    pending[pool.submit(request, tasks)] = (stats.requests, tasks)
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    number, tasks = pending.pop(future)
                    try:
                        reply, finish_reason = future.result()
                    except Exception as e:  # noqa: BLE001 - every failure is reported with its request
                        stats.failed += 1
                        failures_in_a_row += 1
                        where = f"request {number} (seed tasks {', '.join(t['id'] for t in tasks)})"
                        message = f"{where}: {type(e).__name__}: {e}"
                        if type(e).__name__ in FATAL:
                            raise RuntimeError(message) from None
                        if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                            raise RuntimeError(f"{MAX_FAILURES_IN_A_ROW} requests failed in a row; the last: "
                                               f"{message}") from None
                        tqdm.write(f"self-instruct: {message}", file=sys.stderr)
                        continue
                    failures_in_a_row = 0
                    kept_before = len(done)
                    records, dropped = parse_response(reply, finish_reason, num_prompt_tasks)
                    stats.parsed += len(records) + dropped
                    stats.filtered += dropped
                    for record in records:
                        if len(done) >= num_instructions:
                            break
                        scores = dedup.scores(record["instruction"])
                        if scores.max() > threshold:
                            stats.duplicates += 1
                            continue
                        top = np.argsort(scores)[::-1][:10]
                        record["most_similar_instructions"] = {dedup.texts[i]: round(float(scores[i]), 3)
                                                               for i in top}
                        record["avg_similarity_score"] = round(float(scores.mean()), 3)
                        writer.append(record)
                        dedup.add(record["instruction"])
                        done.append(record)
                        stats.kept += 1
                        bar.update(1)
                    barren_in_a_row = 0 if len(done) > kept_before else barren_in_a_row + 1
                    if barren_in_a_row >= MAX_BARREN_IN_A_ROW and len(done) < num_instructions:
                        raise RuntimeError(f"{MAX_BARREN_IN_A_ROW} replies in a row gave no new task (all filtered "
                                           f"out or near-duplicates: {stats.line()}); stopping")
        finally:
            for future in pending:  # requests still out when enough were kept: their replies are not needed
                future.cancel()
            bar.close()
    return stats
