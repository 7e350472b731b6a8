"""Conversations -> token ids and labels with BELLE's masking.

Follows BELLE's training code (train/src/train.py, ``generate_and_tokenize_prompt``): each turn is tokenised on
its own without special tokens; a human turn, wrapped in the style's template, gets label -100; an assistant
turn and the EOS after it are supervised. Style ``belle-v2`` is exactly that code's format. Style ``belle`` (the
model card's) writes turns as the chat prompt renders them (``Human: q\\n\\nAssistant: a\\n\\n...``) and ends the
last reply with EOS, so that the model learns to stop.

Two deliberate differences from BELLE's code: a LLaMA-style tokenizer's own BOS starts the sequence (as at
inference, where the prompt is tokenised with it); and a sample whose supervised tokens were all truncated away
is dropped and counted, where BELLE's code copies a few arbitrary tokens into its labels to keep it.
A plain-text record (``{"text": ...}``) is learned whole, for pre-training.
"""
from __future__ import annotations

from paddle_belle.prompts import get_style

IGNORE = -100


def encode_conversation(conversation: list[dict], tokenizer, style: str, max_length: int) -> dict:
    """``input_ids`` and already-shifted ``labels`` (labels[t] is the token after input_ids[t]), both at most
    ``max_length`` long; the start is kept when truncating. ``labels`` is all IGNORE when nothing supervised
    survived (the caller drops such samples)."""
    s = get_style(style)

    def tokens(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    eos = tokenizer.eos_token_id
    ids = list(tokenizer("")["input_ids"])  # the tokenizer's own start (LLaMA: BOS; BLOOM: nothing)
    labels = [IGNORE] * len(ids)
    for i, turn in enumerate(conversation):
        if turn["from"] == "text":  # pre-training text: no template, every token and the EOS learned
            piece = tokens(turn["value"]) + [eos]
            ids += piece
            labels += piece
            continue
        if turn["from"] == "human":
            piece = tokens(s.user.format(text=turn["value"]))
            ids += piece
            labels += [IGNORE] * len(piece)
            continue
        text, has_eos, after = s.assistant.partition("{eos}")
        piece = tokens(text.format(text=turn["value"]))
        if has_eos or i == len(conversation) - 1:
            piece.append(eos)
        piece += tokens(after)
        ids += piece
        labels += piece
    ids, labels = ids[: max_length + 1], labels[: max_length + 1]
    return {"input_ids": ids[:-1], "labels": labels[1:]}


def supervised(sample: dict) -> bool:
    return any(label != IGNORE for label in sample["labels"])
