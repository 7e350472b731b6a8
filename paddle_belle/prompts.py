"""BELLE's prompt formats, multi-turn history, and stop strings that hold back streamed text.

Styles:
- ``belle``: the belle-7b-2m card, ``Human: {input}\\n\\nAssistant:``; earlier turns are concatenated as
  ``Human: {input}\\n\\nAssistant: {output}\\n\\n``.
- ``belle-v2``: BELLE's current training code, ``Human: \\n{input}\\n\\nAssistant: \\n``, with EOS after each
  assistant turn.
Both stop when the model starts the next ``Human:`` turn itself (BELLE issue #28).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator


@dataclass(frozen=True)
class Style:
    user: str  # template of a user turn, ending where the assistant's reply begins
    assistant: str  # template of a finished assistant turn
    stops: tuple[str, ...] = ("Human:",)


STYLES = {
    "belle": Style(user="Human: {text}\n\nAssistant:", assistant=" {text}\n\n"),
    "belle-v2": Style(user="Human: \n{text}\n\nAssistant: \n", assistant="{text}{eos}"),
}


def get_style(name: str) -> Style:
    if name not in STYLES:
        raise ValueError(f"unknown prompt style {name!r} (known: {', '.join(STYLES)})")
    return STYLES[name]


def render(style: str, history: list[tuple[str, str]], query: str, eos: str = "") -> str:
    """The prompt for ``query`` after the (user, assistant) turns of ``history``."""
    s = get_style(style)
    turns = "".join(s.user.format(text=u) + s.assistant.format(text=a, eos=eos) for u, a in history)
    return turns + s.user.format(text=query)


def fit_history(style: str, history: list[tuple[str, str]], query: str, count_tokens, max_tokens: int,
                eos: str = "") -> list[tuple[str, str]]:
    """The most recent turns of ``history`` whose prompt (with ``query``) takes at most ``max_tokens`` tokens;
    the oldest turns go first. A query that does not fit on its own is an error."""
    for start in range(len(history) + 1):
        kept = history[start:]
        if count_tokens(render(style, kept, query, eos)) <= max_tokens:
            return kept
    raise ValueError(f"the message alone takes more than the {max_tokens} tokens the prompt may use")


def cut_at_stop(text: str, stops) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


@dataclass
class StopHolder:
    """Turns a growing decoded text into printable increments, holding back any tail that could still become a
    stop string (``Hum`` might be the start of ``Human:``) or an incomplete UTF-8 character, until decided."""

    stops: tuple[str, ...]
    printed: int = 0
    stopped: bool = False
    _text: str = field(default="", repr=False)

    def push(self, text: str) -> str:
        """The new printable part of ``text`` (the whole reply decoded so far)."""
        if self.stopped:
            return ""
        self._text = text
        text, self.stopped = cut_at_stop(text, self.stops)
        if not self.stopped:
            text = text.rstrip("\ufffd")  # a multi-byte character still arriving
            for n in range(min(len(text), max((len(s) for s in self.stops), default=0)), 0, -1):
                if any(s.startswith(text[-n:]) for s in self.stops):
                    text = text[:-n]
                    break
        out, self.printed = text[self.printed :], max(self.printed, len(text))
        return out

    def flush(self) -> str:
        """At the end of generation: whatever was held back and is not a stop string."""
        text, _ = cut_at_stop(self._text, self.stops)
        out, self.printed = text[self.printed :], len(text)
        return out if not self.stopped else ""


def reply_text(text: str, stops) -> str:
    """A finished reply: cut at the first stop string, whitespace trimmed."""
    return cut_at_stop(text, stops)[0].strip()


def stream_text(token_steps: Iterator, decode, stops) -> Iterator[str]:
    """Printable text increments from a stream of token ids (one int per step) of a single reply."""
    holder, tokens = StopHolder(tuple(stops)), []
    for token in token_steps:
        tokens.append(int(token))
        chunk = holder.push(decode(tokens))
        if chunk:
            yield chunk
        if holder.stopped:
            return
    tail = holder.flush()
    if tail:
        yield tail
