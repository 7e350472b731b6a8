import pytest
from reference import tiny_belle_dir, tiny_llama_dir

from paddle_belle import AutoTokenizer
from paddle_belle.data import IGNORE, encode_conversation, to_conversation

TWO_TURNS = {"conversations": [{"from": "human", "value": "你好"}, {"from": "assistant", "value": "我是BELLE。"},
                               {"from": "human", "value": "1+1=?"}, {"from": "assistant", "value": "等于2"}]}


@pytest.fixture(scope="module")
def bloom_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("belle")
    tiny_belle_dir(d)
    return AutoTokenizer.from_pretrained(d)


def parts(sample, tok):
    """(the whole text, the supervised text): labels are shifted, so the first token is never a target."""
    ids, labels = sample["input_ids"], sample["labels"]
    assert len(ids) == len(labels)
    assert labels[:-1] == [t if l != IGNORE else IGNORE for t, l in zip(ids[1:], labels[:-1])]  # labels = next id
    whole = ids + [labels[-1]] if labels[-1] != IGNORE else ids
    return tok.decode(whole), tok.decode([l for l in labels if l != IGNORE])


@pytest.mark.parametrize("style, text, target", [
    ("belle-v2", "Human: \n你好\n\nAssistant: \n我是BELLE。</s>Human: \n1+1=?\n\nAssistant: \n等于2</s>",
     "我是BELLE。</s>等于2</s>"),
    ("belle", "Human: 你好\n\nAssistant: 我是BELLE。\n\nHuman: 1+1=?\n\nAssistant: 等于2\n\n</s>",
     " 我是BELLE。\n\n 等于2\n\n</s>"),
])
def test_masking_two_turns_both_styles(bloom_tok, style, text, target):
    sample = encode_conversation(to_conversation(TWO_TURNS), bloom_tok, style, max_length=512)
    assert parts(sample, bloom_tok) == (text, target)


@pytest.mark.parametrize("record, target", [
    ({"instruction": "写诗", "input": "春天", "output": "春眠不觉晓"}, "春眠不觉晓</s>"),
    ({"input": "1+1=?", "target": "2"}, "2</s>"),
    ({"instruction": "Human:你好\nAssistant:您好\nHuman:再见\nAssistant:", "output": "再见！"}, "您好</s>再见！</s>"),
])
def test_every_shape_supervises_exactly_the_replies(bloom_tok, record, target):
    sample = encode_conversation(to_conversation(record), bloom_tok, "belle-v2", max_length=512)
    assert parts(sample, bloom_tok)[1] == target


def test_truncation_keeps_the_start_and_can_leave_nothing_supervised(bloom_tok):
    conversation = to_conversation(TWO_TURNS)
    full = encode_conversation(conversation, bloom_tok, "belle-v2", max_length=512)
    question = len(bloom_tok("Human: \n你好\n\nAssistant: \n")["input_ids"])
    cut = encode_conversation(conversation, bloom_tok, "belle-v2", max_length=question - 1)
    assert cut["input_ids"] == full["input_ids"][: question - 1] and cut["labels"] == full["labels"][: question - 1]
    assert all(label == IGNORE for label in cut["labels"])  # only the first question fits
    one_more = encode_conversation(conversation, bloom_tok, "belle-v2", max_length=question)
    assert [l for l in one_more["labels"] if l != IGNORE] == [full["input_ids"][question]]  # the reply's first token


def test_llama_sequences_start_with_bos_like_the_inference_prompt(tmp_path):
    tiny_llama_dir(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    sample = encode_conversation(to_conversation(TWO_TURNS), tok, "belle-v2", max_length=512)
    assert sample["input_ids"][0] == tok.bos_token_id and sample["labels"][0] == IGNORE
    supervised = [l for l in sample["labels"] if l != IGNORE]
    assert supervised.count(tok.eos_token_id) == 2 and supervised[-1] == tok.eos_token_id
    assert tok.decode(supervised, skip_special_tokens=True).replace(" ", "") == "我是BELLE。等于2"


def test_plain_text_is_learned_whole_with_eos(bloom_tok):
    sample = encode_conversation(to_conversation({"text": "人工智能是计算机科学的一个分支。"}), bloom_tok, "belle", 512)
    assert parts(sample, bloom_tok)[0] == "人工智能是计算机科学的一个分支。</s>"
    assert sample["labels"] == sample["input_ids"][1:] + [bloom_tok.eos_token_id]
