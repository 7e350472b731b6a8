"""AutoTokenizer on PaddleNLP and HF layouts, checked against HF tokenizers."""
import json
import shutil

import sentencepiece as spm
import transformers
from paddlenlp.transformers import BloomTokenizer as PaddleNLPBloomTokenizer
from paddlenlp.transformers import LlamaTokenizer as PaddleNLPLlamaTokenizer
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from paddle_belle import AutoTokenizer, BloomConfig

CORPUS = [
    "人工智能是计算机科学的一个分支，它企图了解智能的实质。",
    "请给我讲一个关于勇气的故事。小明今天买了3.5斤苹果，花了12元！",
    "Human: 你好，请问你是谁？\n\nAssistant: 我是BELLE，一个中文对话模型。",
    "Hello, world! It's a test of the tokenizer... (with brackets) and a|b pipes.",
    "数学题：一个长方形的长是8厘米，宽是5厘米，它的面积是多少？答：40平方厘米。",
] * 20
TEXT = "Hello,  world! It's 3.14… 你好，世界。 (测试) a|b\n\n  end？Assistant: 好的、明白"


def bloom_tokenizer_json(directory):
    """A small byte-level BPE with BLOOM's pre-tokenizer and special tokens, saved as HF tokenizer.json."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(" ?[^(\\s|[.,!?…。，、।۔،])]+"), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BloomTokenizerFast", **special}))
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), **special)


def test_bloom_tokenizer_json_gives_hf_ids(tmp_path):
    hf = bloom_tokenizer_json(tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(ours, PaddleNLPBloomTokenizer)
    expected = hf(TEXT)["input_ids"]
    assert ours(TEXT)["input_ids"] == expected
    assert ours.decode(expected) == TEXT
    assert (ours.eos_token_id, ours.pad_token_id) == (2, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]  # SRC untouched
    # PaddleNLP's own split (GPT-2's regex) disagrees on this text: the reason ours overrides it.
    assert PaddleNLPBloomTokenizer._tokenize(ours, TEXT) != ours.tokenize(TEXT)


def test_bloom_vocab_and_merges_with_and_without_header(tmp_path):
    hf = bloom_tokenizer_json(tmp_path / "hf")
    model = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    for name, header in (("paddle", "#version: 0.2\n"), ("headerless", "")):
        d = tmp_path / name
        d.mkdir()
        (d / "vocab.json").write_text(json.dumps(model["vocab"]))
        (d / "merges.txt").write_text(header + "\n".join(merges) + "\n")
        BloomConfig(vocab_size=len(model["vocab"])).save_pretrained(d)  # a config.json names the model type
        assert AutoTokenizer.from_pretrained(d)(TEXT)["input_ids"] == hf(TEXT)["input_ids"], name


def test_llama_tokenizer_model_gives_hf_ids(tmp_path):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(tmp_path / "sp"), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
    )
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    shutil.move(tmp_path / "sp.model", hf_dir / "tokenizer.model")
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    hf = transformers.LlamaTokenizer(vocab_file=str(hf_dir / "tokenizer.model"), legacy=True)
    ours = AutoTokenizer.from_pretrained(hf_dir)
    assert isinstance(ours, PaddleNLPLlamaTokenizer)
    text = TEXT.replace("\n", " ")  # sentencepiece normalises newlines differently per wrapper; not our concern
    assert ours(text)["input_ids"] == hf(text)["input_ids"]
    assert ours.bos_token_id == 1 and ours.eos_token_id == 2


def test_bloom_split_matches_hf_on_random_text(tmp_path):
    import random

    hf = bloom_tokenizer_json(tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    alphabet = list("ab 你好。，、.,!?…()|[]'\"\n\t\r\x0b\x0c\xa0\u3000\u2028\x85।۔،-_3") + ["  ", "\n\n", " ("]
    rnd = random.Random(0)
    for _ in range(300):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 25)))
        assert ours(text)["input_ids"] == hf(text)["input_ids"], repr(text)
