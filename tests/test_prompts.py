"""BELLE prompt styles, history truncation, stop-string holdback."""
import pytest

from paddle_belle.prompts import StopHolder, fit_history, render, reply_text, stream_text


def test_styles_render_belle_formats():
    assert render("belle", [], "你好") == "Human: 你好\n\nAssistant:"  # the belle-7b-2m card
    assert render("belle", [("1+1=?", "2")], "再加1?") == "Human: 1+1=?\n\nAssistant: 2\n\nHuman: 再加1?\n\nAssistant:"
    assert render("belle-v2", [("a", "b")], "c", eos="</s>") == "Human: \na\n\nAssistant: \nb</s>Human: \nc\n\nAssistant: \n"
    with pytest.raises(ValueError, match="unknown prompt style"):
        render("chatml", [], "x")


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
