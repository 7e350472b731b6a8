"""Every BELLE release's record shape -> one conversation: a list of {"from": "human"|"assistant", "value": str}.

Shapes (https://huggingface.co/BelleGroup):
- ``instruction``/``input``/``output``: train_0.5M/1M/2M_CN, school_math_0.25M, generated_chat_0.4M (its output
  is a whole generated dialogue, still a single reply), dev1K_school_math. A non-empty ``input`` follows the
  instruction on a new line.
- multiturn_chat_0.8M: the same fields, but ``instruction`` holds the history as ``Human:…\\nAssistant:…`` lines
  ending with ``Assistant:``; ``output`` is the next reply.
- ``input``/``target``: the HF copy of the 0.5M release (generated_train_0.5M_CN).
- ``conversations``: train_3.5M_CN, and BELLE's current training code's own format.
- ``text``: plain text for (continued) pre-training, every token learned: one turn {"from": "text"}.
"""
from __future__ import annotations

import re

HUMAN, ASSISTANT, TEXT = "human", "assistant", "text"
ROLES = {"human": HUMAN, "user": HUMAN, "assistant": ASSISTANT, "gpt": ASSISTANT}
# A turn marker at the start of the text or of a line, as multiturn_chat_0.8M writes them.
_TURN = re.compile(r"(?:^|\n)(Human|Assistant):")


class RecordError(ValueError):
    """A record that is not one of BELLE's shapes; the message says what is wrong (the caller adds file:line)."""


def _text(record: dict, field: str, required: bool = True) -> str:
    if field not in record:
        if required:
            raise RecordError(f"missing field {field!r}")
        return ""
    value = record[field]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"field {field!r} must be a string, not {type(value).__name__}")
    return value


def _split_history(instruction: str) -> list[dict]:
    """multiturn_chat_0.8M's ``Human:…\\nAssistant:…\\nHuman:…\\nAssistant:`` -> turns, the last one (empty
    assistant) left out."""
    parts = _TURN.split(instruction)
    if parts[0].strip():
        raise RecordError("text before the first 'Human:' in a multi-turn instruction")
    turns = [{"from": ROLES[role.lower()], "value": value.strip()} for role, value in zip(parts[1::2], parts[2::2])]
    if not turns or turns[-1] != {"from": ASSISTANT, "value": ""}:
        raise RecordError("a multi-turn instruction must end with 'Assistant:'")
    return turns[:-1]


def to_conversation(record) -> list[dict]:
    """The record as alternating human/assistant turns, starting with human and ending with assistant."""
    if not isinstance(record, dict):
        raise RecordError(f"a record must be a JSON object, not {type(record).__name__}")
    if "text" in record and not {"conversations", "instruction", "output", "target"} & set(record):
        text = _text(record, "text")
        if not text.strip():
            raise RecordError("empty text")
        return [{"from": TEXT, "value": text}]
    if "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise RecordError("field 'conversations' must be a list")
        conversation = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise RecordError(f"conversations[{i}] must be an object")
            role = _text(turn, "from")
            if role.lower() not in ROLES:
                raise RecordError(f"conversations[{i}]: unknown speaker {role!r} (expected human or assistant)")
            conversation.append({"from": ROLES[role.lower()], "value": _text(turn, "value")})
    elif "target" in record and "output" not in record:
        conversation = [{"from": HUMAN, "value": _text(record, "input")},
                        {"from": ASSISTANT, "value": _text(record, "target")}]
    else:
        instruction, extra = _text(record, "instruction"), _text(record, "input", required=False)
        output = _text(record, "output")
        if instruction.lstrip().startswith("Human:"):
            conversation = _split_history(instruction.strip()) + [{"from": ASSISTANT, "value": output}]
        else:
            query = instruction + ("\n" + extra if extra.strip() else "")
            conversation = [{"from": HUMAN, "value": query}, {"from": ASSISTANT, "value": output}]
    return _checked(conversation)


def _checked(conversation: list[dict]) -> list[dict]:
    if conversation and conversation[-1]["from"] == HUMAN:
        conversation = conversation[:-1]  # a trailing question has no reply to learn from
    if not conversation:
        raise RecordError("no human/assistant exchange")
    for i, turn in enumerate(conversation):
        expected = HUMAN if i % 2 == 0 else ASSISTANT
        if turn["from"] != expected:
            raise RecordError(f"turn {i} is {turn['from']}, expected {expected} (turns must alternate, human first)")
    return conversation
