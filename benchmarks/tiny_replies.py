"""How belle-tiny-zh's sampled replies look: the bundled model's first-impression check (issue 16, item 9).

For each prompt, one reply per seed through ChatSession (the `chat` command's path) with the `belle-card` preset;
counts the replies with at least 5 Chinese characters and those with a run of 8 or more identical non-CJK,
non-space symbols (``1. <<<>>>>>>…`` was the first build's usual answer). Targets: >= 38/40 with 5 CJK, no runs.

    python benchmarks/tiny_replies.py [--model belle-tiny-zh] [--seeds 40] [--threads 2] [--show]
"""
import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["写一首关于春天的诗", "中国的首都是哪里？", "请写一句关于春天的话。", "小明有3个苹果，又买了5个，现在一共有几个苹果？"]
CJK = re.compile(r"[\u4e00-\u9fff]")
RUN = re.compile(r"([^\s\u4e00-\u9fff])\1{7,}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="belle-tiny-zh")
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--show", action="store_true", help="print every reply with a run or few CJK characters")
    args = parser.parse_args()

    from paddle_belle import AutoModelForCausalLM, AutoTokenizer
    from paddle_belle.cpu import set_cpu_threads

    set_cpu_threads(args.threads)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    print(f"{args.model}, belle-card preset, seeds 0-{args.seeds - 1}\n")
    print(table(reply_counts(model, tokenizer, args.seeds, show=args.show)))


def reply_counts(model, tokenizer, seeds: int, show: bool = False) -> list[dict]:
    """Per prompt: how many of ``seeds`` sampled replies have >= 5 CJK characters, and how many have a run."""
    from paddle_belle.chat import ChatSession

    counts = []
    for prompt in PROMPTS:
        cjk = runs = 0
        for seed in range(seeds):
            reply = "".join(ChatSession(model, tokenizer, preset="belle-card", seed=seed).ask(prompt))
            good, run = len(CJK.findall(reply)) >= 5, RUN.search(reply)
            cjk, runs = cjk + good, runs + bool(run)
            if show and (run or not good):
                print(f"  seed {seed}: {reply!r}", file=sys.stderr)
        counts.append({"prompt": prompt, "seeds": seeds, "cjk": cjk, "runs": runs})
    return counts


def table(counts: list[dict]) -> str:
    rows = [f"| {c['prompt']} | {c['cjk']}/{c['seeds']} | {c['runs']}/{c['seeds']} |" for c in counts]
    return "\n".join(["| prompt | replies with >= 5 CJK | replies with a run of >= 8 symbols |", "|---|---|---|", *rows])

if __name__ == "__main__":
    main()
