"""BELLE's prompt formats, multi-turn history, and a reply's text built token by token (stop strings hold it back).

Styles:
- ``belle``: the belle-7b-2m card, ``Human: {input}\\n\\nAssistant:``; earlier turns are concatenated as
  ``Human: {input}\\n\\nAssistant: {output}\\n\\n``.
- ``belle-v2``: BELLE's current training code, ``Human: \\n{input}\\n\\nAssistant: \\n``, with EOS after each
  assistant turn.
Both stop when the model starts the next ``Human:`` turn itself (BELLE issue #28). Not BELLE's:
- ``chatml``: ``<|im_start|>user\\n{input}<|im_end|>\\n<|im_start|>assistant\\n``, EOS and a newline after each
  reply, and a system turn of its own: the chat template of models tuned in it whose EOS is ``<|im_end|>``
  (SmolLM2-Instruct).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class Style:
    user: str  # template of a user turn, ending where the assistant's reply begins
    assistant: str  # template of a finished assistant turn
    stops: tuple[str, ...] = ("Human:",)
    system: str | None = None  # template of a system turn; None: a system text opens the first user turn


STYLES = {
    "belle": Style(user="Human: {text}\n\nAssistant:", assistant=" {text}\n\n"),
    "belle-v2": Style(user="Human: \n{text}\n\nAssistant: \n", assistant="{text}{eos}"),
    "chatml": Style(user="<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n", assistant="{text}{eos}\n",
                    stops=("<|im_end|>", "<|im_start|>"), system="<|im_start|>system\n{text}<|im_end|>\n"),
}


def get_style(name: str) -> Style:
    if name not in STYLES:
        raise ValueError(f"unknown prompt style {name!r} (known: {', '.join(STYLES)})")
    return STYLES[name]


def recorded_style(config) -> str:
    """The style a model was trained in, as its config.json's ``prompt_style`` records it (``paddle-belle train``
    and ``merge-lora`` write it; loading fills it in from the model's own chat template, ``directory_style``), else
    ``belle``: the format of BELLE's published models, which record none. ``config``: a model config object or
    config.json's dict."""
    style = (config.get("prompt_style") if isinstance(config, dict) else getattr(config, "prompt_style", None))
    style = style or "belle"
    get_style(style)  # a recorded name this version does not know is an error, not a silent fallback
    return style


def render(style: str, history: list[tuple[str, str]], query: str, eos: str = "", system: str = "") -> str:
    """The prompt for ``query`` after the (user, assistant) turns of ``history``. BELLE has no system role: a
    ``system`` text opens the first user turn, on a line of its own (alone if that turn is empty), unless the
    style has a system turn."""
    s, opening = get_style(style), ""
    if system and s.system:
        opening, system = s.system.format(text=system), ""
    if system and history:
        history = [(f"{system}\n{history[0][0]}" if history[0][0] else system, history[0][1]), *history[1:]]
    elif system:
        query = f"{system}\n{query}"
    turns = "".join(s.user.format(text=u) + s.assistant.format(text=a, eos=eos) for u, a in history)
    return opening + turns + s.user.format(text=query)


def template_style(template: str, eos: str = "") -> str | None:
    """The style whose ``render`` gives what the Jinja chat ``template`` gives (HF's ``chat_template``, GGUF's) for a
    probe conversation with a system text, one earlier exchange and a question, ``eos`` the tokenizer's EOS token;
    None when no style does (or the template does not render). The environment is transformers' (utils/chat_template_utils.py): sandboxed,
    trim_blocks, lstrip_blocks, loop controls, ``raise_exception``."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    system, history, query = "Be brief.", [("1+1=?", "2")], "3+3?"
    messages = [{"role": "system", "content": system}]
    for user, assistant in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": query})
    try:
        text = env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token="",
                                                eos_token=eos)
    except Exception:  # any template error (a template from a checkpoint): no style recognised
        return None
    return next((name for name in STYLES if render(name, history, query, eos, system) == text), None)


def directory_style(path) -> str | None:
    """The style of a checkpoint directory's own chat template (tokenizer_config.json's ``chat_template``: a string,
    or HF's list of named templates, "default" used), by ``template_style``; None without one or when no style
    renders like it."""
    from paddle_belle.convert.tokenizer import special_tokens

    config = Path(path) / "tokenizer_config.json"
    if not config.is_file():
        return None
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    eos = special_tokens(Path(path)).get("eos_token", "")
    return template_style(template, eos if isinstance(eos, str) else "") if isinstance(template, str) else None


def jinja_template(style: str) -> str:
    """``render`` as a Jinja chat template (HF's ``chat_template``, GGUF's ``tokenizer.chat_template``): the same
    text for the same turns, so llama.cpp and transformers users get BELLE's prompt. A user turn already ends with
    the assistant's cue, so ``add_generation_prompt`` adds nothing."""
    s = get_style(style)

    def literal(text):  # a Jinja string literal (Python's escapes)
        return "'" + json.dumps(text)[1:-1].replace("'", "\\'") + "'"

    def turn(template, text):
        head, tail = template.split("{text}")
        return "{{ " + " ~ ".join([literal(head), text, " ~ eos_token ~ ".join(map(literal, tail.split("{eos}")))]) + " }}"

    if s.system is None:  # a system text opens the first user turn
        system = "{%- set ns.system = message['content'] -%}"
        user = ("{%- set text = (ns.system ~ ('\\n' if message['content'] else '') ~ message['content']) if ns.system "
                "else message['content'] -%}{%- set ns.system = '' -%}" + turn(s.user, "text"))
    else:  # its own turn (an empty one is left out, as render does)
        system = "{%- if message['content'] -%}" + turn(s.system, "message['content']") + "{%- endif -%}"
        user = turn(s.user, "message['content']")
    return (
        "{%- set ns = namespace(system='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}" + system +
        "{%- elif message['role'] == 'user' -%}" + user +
        "{%- elif message['role'] == 'assistant' -%}" + turn(s.assistant, "message['content']") +
        "{%- endif -%}{%- endfor -%}"
    )


def fit_history(style: str, history: list[tuple[str, str]], query: str, count_tokens, max_tokens: int,
                eos: str = "", system: str = "") -> list[tuple[str, str]]:
    """The most recent turns of ``history`` whose prompt (with ``query``, and ``system`` which always stays) takes
    at most ``max_tokens`` tokens; the oldest turns go first. A query that does not fit on its own is an error."""
    for start in range(len(history) + 1):
        kept = history[start:]
        if count_tokens(render(style, kept, query, eos, system)) <= max_tokens:
            return kept
    raise ValueError(f"the message alone takes more than the {max_tokens} tokens the prompt may use")


def cut_at_stop(text: str, stops) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


# Tails the next token may change: an incomplete UTF-8 character, and beginnings of what decode()'s default clean-up
# (clean_up_tokenization_spaces) deletes a space of: " .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're"
_UNSETTLED = ("\ufffd", " ", " n", " n'", " '", " 'v", " 'r")


class ReplyText:
    """A reply's text, from its tokens (``add``; ``decode``: ids -> text, special tokens skipped) or from the whole
    text decoded so far (``push``): the newly printable part at each step, less any tail that could still become a
    stop string (``Hum`` might begin ``Human:``) or an incomplete character; ``strip`` drops a chat reply's leading
    whitespace; ``finish_reason`` says why it ended. Decoding is incremental, as vLLM's detokenize_incrementally
    (vllm/transformers_utils/detokenizer_utils.py): a step decodes only the tokens since the text last settled (no
    _UNSETTLED tail), after the ones before them as context (SentencePiece drops a leading space). So the whole
    text is exactly ``decode(tokens)``, cut at a stop string."""

    def __init__(self, stops=(), decode=None, strip=False):
        self.stops, self.decode, self.strip = tuple(stops), decode, strip
        self.text, self.stopped, self.finish_reason, self.tokens = "", False, None, []  # text: printed so far
        self._text, self._settled, self._context, self._ctx, self._start = "", "", "", 0, 0

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
        out, self.text = text[len(self.text) :], self._text[: max(len(self.text), len(text))]
        return out

    def flush(self) -> str:
        """At the end of generation: whatever was held back and is not a stop string."""
        text, _ = cut_at_stop(self._text, self.stops)
        out, self.text = text[len(self.text) :], text
        return out if not self.stopped else ""

    def add(self, token, reason: str | None = None) -> str:
        """The newly printable text after ``token``, with the rest if it ended generation for ``reason``."""
        self.tokens.append(int(token))
        new = self.decode(self.tokens[self._ctx :])
        if len(new) > len(self._context) and not new.endswith(_UNSETTLED):
            self._settled += new[len(self._context) :]
            self._ctx, self._start = self._start, len(self.tokens)
            self._context = self.decode(self.tokens[self._ctx :])
        out = self.push(self._settled.lstrip() if self.strip else self._settled)
        return out + self.end(reason) if reason or self.stopped else out

    def end(self, reason: str | None) -> str:
        """The rest of the text once generation ended for ``reason`` (or "stop" at a stop string in the text)."""
        self._settled += self.decode(self.tokens[self._ctx :])[len(self._context) :]
        out = self.push(self._settled.lstrip() if self.strip else self._settled) + self.flush()
        self.finish_reason = "stop" if self.stopped else reason
        return out


def reply_text(text: str, stops) -> str:
    """A finished reply: cut at the first stop string, whitespace trimmed."""
    return cut_at_stop(text, stops)[0].strip()


def stream_text(token_steps: Iterator, decode, stops) -> Iterator[str]:
    """Printable text increments ("" while held back) from the token ids (one per step) of a single reply."""
    reply = ReplyText(stops, decode)
    for token in token_steps:
        yield reply.add(token)
        if reply.stopped:
            return
    yield reply.end(None)  # why the tokens ended is not known here
