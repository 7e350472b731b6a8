import pytest

from paddle_belle.data import RecordError, to_conversation


def conv(*turns):
    return [{"from": "human" if i % 2 == 0 else "assistant", "value": t} for i, t in enumerate(turns)]


@pytest.mark.parametrize("record, expected", [
    # train_0.5M/1M/2M_CN, school_math_0.25M, generated_chat_0.4M
    ({"instruction": "写一首诗", "input": "", "output": "春眠不觉晓"}, conv("写一首诗", "春眠不觉晓")),
    ({"instruction": "翻译成英文", "input": "你好", "output": "Hello"}, conv("翻译成英文\n你好", "Hello")),
    # the HF copy of the 0.5M release
    ({"input": "1+1=?", "target": "2"}, conv("1+1=?", "2")),
    # train_3.5M_CN
    ({"id": "1", "conversations": [{"from": "human", "value": "你好"}, {"from": "assistant", "value": "您好"},
                                   {"from": "human", "value": "再见"}, {"from": "assistant", "value": "再见！"}]},
     conv("你好", "您好", "再见", "再见！")),
    # multiturn_chat_0.8M: the history inside the instruction
    ({"instruction": "Human:你好\nAssistant:你好！有什么可以帮您？\nHuman:讲个笑话\nAssistant:", "input": "",
      "output": "从前有座山。"},
     conv("你好", "你好！有什么可以帮您？", "讲个笑话", "从前有座山。")),
    ({"instruction": "Human:请写一篇文章\nAssistant:", "input": "", "output": "好的。"}, conv("请写一篇文章", "好的。")),
    # plain text for pre-training
    ({"text": "人民日报社论。"}, [{"from": "text", "value": "人民日报社论。"}]),
    # a trailing question without a reply teaches nothing and is left out
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "assistant", "value": "b"},
                        {"from": "human", "value": "c"}]}, conv("a", "b")),
])
def test_every_belle_shape_becomes_a_conversation(record, expected):
    assert to_conversation(record) == expected


@pytest.mark.parametrize("record, message", [
    ({"instruction": "x", "input": ""}, "missing field 'output'"),
    ({"instruction": "x", "output": 3}, "field 'output' must be a string, not int"),
    ({"conversations": "hi"}, "must be a list"),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "unknown speaker 'bot'"),
    ({"conversations": [{"from": "assistant", "value": "x"}]}, "turn 0 is assistant, expected human"),
    ({"conversations": [{"from": "human", "value": "x"}]}, "no human/assistant exchange"),
    ({"conversations": [{"from": "human", "value": "x"}, {"from": "human", "value": "y"},
                        {"from": "assistant", "value": "z"}]}, "turn 1 is human, expected assistant"),
    ({"instruction": "Human:你好\nAssistant:好", "output": "x"}, "must end with 'Assistant:'"),
    (["not", "a", "dict"], "must be a JSON object"),
    ({"text": "  "}, "empty text"),
])
def test_malformed_records_say_what_is_wrong(record, message):
    with pytest.raises(RecordError, match=message):
        to_conversation(record)
