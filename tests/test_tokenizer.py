"""AutoTokenizer on PaddleNLP and HF layouts, checked against HF tokenizers."""
import json
import shutil

import pytest
import sentencepiece as spm
import transformers
from paddlenlp.transformers import BloomTokenizer as PaddleNLPBloomTokenizer
from paddlenlp.transformers import LlamaTokenizer as PaddleNLPLlamaTokenizer
from reference import CORPUS, TEXT, bloom_tokenizer_json, llama3_style_tokenizer_json

from paddle_belle import AutoTokenizer, BloomConfig
from paddle_belle.tokenizer import JsonTokenizer

def test_bloom_tokenizer_json_gives_hf_ids(tmp_path):
    hf = bloom_tokenizer_json(tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(ours, PaddleNLPBloomTokenizer)
    expected = hf(TEXT)["input_ids"]
    assert ours(TEXT)["input_ids"] == expected
    assert ours.decode(expected) == TEXT
    # An id past the vocabulary (BLOOM's embedding has rows beyond it) is skipped, as HF's fast tokenizer does.
    padded = expected[:3] + [len(ours) + 5] + expected[3:]
    assert ours.decode(padded) == hf.decode(padded) == TEXT
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
    ids = hf(text)["input_ids"]
    assert ours(text)["input_ids"] == ids
    assert ours.bos_token_id == 1 and ours.eos_token_id == 2
    # sentencepiece raises on an id past its pieces; ours skips it (HF's fast tokenizers do)
    assert ours.decode(ids[:4] + [len(ours) + 5] + ids[4:]) == hf.decode(ids)


def test_bloom_split_matches_hf_on_random_text(tmp_path):
    import random

    hf = bloom_tokenizer_json(tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    alphabet = list("ab 你好。，、.,!?…()|[]'\"\n\t\r\x0b\x0c\xa0\u3000\u2028\x85।۔،-_3") + ["  ", "\n\n", " ("]
    rnd = random.Random(0)
    for _ in range(300):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 25)))
        assert ours(text)["input_ids"] == hf(text)["input_ids"], repr(text)


CHATML = "<|im_start|>user\n数数: 12345, it's  3.14…<|im_end|>\n<|im_start|>assistant\nHello,  world!\t🙂<|im_end|>"


@pytest.mark.parametrize("bos", [True, False], ids=["llama3-bos", "smollm2"])
def test_byte_level_tokenizer_json_gives_hf_ids(tmp_path, bos):
    """A LLaMA-family tokenizer that is only a tokenizer.json: ids, decoding, padding and saving as transformers'
    fast tokenizer does them, special tokens and the whitespace around them included."""
    hf = llama3_style_tokenizer_json(tmp_path / "tok", bos=bos)
    (tmp_path / "tok" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    ours = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert isinstance(ours, JsonTokenizer)
    for text in (CHATML, TEXT, " leading space", "", "It isn 't so . Is it ?"):
        ids = ours(text)["input_ids"]
        assert ids == hf(text)["input_ids"], text
        assert ours(text, add_special_tokens=False)["input_ids"] == hf(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(ids) == hf.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
        assert ours.batch_decode([ids]) == hf.batch_decode([ids])
    assert ours.decode(ours(CHATML, add_special_tokens=False)["input_ids"]) == CHATML
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, len(ours)) == (1, 2, 2, len(hf))
    batch, expected = ours(["hi", CHATML], padding=True), hf(["hi", CHATML], padding=True, padding_side="left")
    assert batch["input_ids"] == expected["input_ids"] and batch["attention_mask"] == expected["attention_mask"]
    ours.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again(CHATML)["input_ids"] == hf(CHATML)["input_ids"] and again.eos_token == "<|im_end|>"
