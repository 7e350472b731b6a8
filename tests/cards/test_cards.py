"""Model cards against independently computed facts: file sizes from os.stat of checkpoints our writers made, the
memory table from quant/estimate.py, model_cards/ against a fresh generation, and every card's usage snippet run
on a tiny checkpoint."""
import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import paddle
import pytest
from reference import tiny_belle_dir, tiny_llama_dir

from paddle_belle import cli, registry
from paddle_belle.cards import FACTS, build_card, stale_model_cards
from paddle_belle.cards.files import checkpoint_tensors, nbytes, weight_files
from paddle_belle.checkpoint import read_safetensors_header
from paddle_belle.checkpoint import read_config
from paddle_belle.models.bloom import BloomConfig, BloomForCausalLM
from paddle_belle.models.llama import LlamaConfig, LlamaForCausalLM
from paddle_belle.quant import QuantConfig
from paddle_belle.quant.estimate import estimate, row_name
from paddle_belle.quant.quantize import quantize_checkpoint, quantize_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bloom_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("belle")
    tiny_belle_dir(d)
    return d


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    tiny_llama_dir(d)
    return d


@pytest.fixture(scope="module")
def quantized_dirs(bloom_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("quantized")
    dirs = {}
    for bits in (8, 4):
        dirs[bits] = base / f"q{bits}"
        quantize_checkpoint(bloom_dir, dirs[bits], QuantConfig(bits=bits, group_size=16, method="rtn"))
    return dirs


def run_cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def table(card: str, section: str) -> list[list[str]]:
    """The cells of the first markdown table in a ``## section``, header and rule dropped."""
    body = card.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


def as_int(cell: str) -> int:
    return int(cell.replace(",", "").replace("*", ""))


# -------------------------------------------------------------------------------- the checked-in cards
def test_model_cards_are_up_to_date():
    directory = ROOT / "model_cards"
    assert stale_model_cards(directory) == [], "run: python tools/make_model_cards.py"
    assert sorted(p.name for p in directory.glob("*.md")) == sorted(f"{f.title}.md" for f in FACTS.values())


def test_cards_cover_the_issue_models_with_published_facts():
    titles = {f.title for f in FACTS.values()}
    assert {"BELLE-7B-0.2M", "BELLE-7B-0.6M", "BELLE-7B-1M", "BELLE-7B-2M", "BELLE-LLaMA-7B-0.6M", "BELLE-LLaMA-7B-2M",
            "BELLE-7B-2M-GPTQ-8bit-128g", "BELLE-7B-2M-GPTQ-4bit-128g"} <= titles
    card = (ROOT / "model_cards" / "BELLE-7B-1M.md").read_text(encoding="utf-8")
    hyper = dict(table(card, "Training hyper-parameters"))
    assert hyper == {"batch size": "64", "learning rate": "3e-6", "epochs": "3", "weight decay": "0.001",
                     "warmup rate": "0.1", "LR scheduler": "linear"}
    assert "Human: {input}\n\nAssistant:" in card and "arXiv:2303.14742" in card and "arXiv:2304.07854" in card
    llama = (ROOT / "model_cards" / "BELLE-LLaMA-7B-2M.md").read_text(encoding="utf-8")
    assert "Training hyper-parameters: not published" in llama  # the 7B LLaMA cards could not be checked
    gptq = (ROOT / "model_cards" / "BELLE-7B-2M-GPTQ-8bit-128g.md").read_text(encoding="utf-8")
    assert "| bloom7b-2m-8bit-128g.pt | 9.7G | ~11.4G |" in gptq and "| base (BELLE-7B-2M) | 27G | ~28.2G |" in gptq
    assert "paddle-belle convert BELLE-7B-gptq-hf/bloom7b-2m-8bit-128g.pt belle-7b-2m-gptq-8bit-128g --from-gptq" in gptq
    # What the import writes (codes, scales, zeros, float32 rest) is within 1 % of BELLE's file sizes (GiB).
    files = {r[0]: r[1] for r in table(gptq, "Files")}
    assert abs(as_int(files["model.safetensors"]) / 1024**3 / 9.7 - 1) < 0.01
    llama_gptq = (ROOT / "model_cards" / "BELLE-LLaMA-7B-2M-gptq.md").read_text(encoding="utf-8")
    assert "paddle-belle decrypt BELLE-LLaMA-7B-2M-gptq-enc /path/to/LLaMA-7B/consolidated.00.pth" in llama_gptq
    assert "--from-gptq" in llama_gptq and "| llama7b-2m-8bit-128g.pt (encrypted) | 7.26 GB | not published |" in llama_gptq
    open_data = (ROOT / "model_cards" / "BELLE-on-Open-Datasets.md").read_text(encoding="utf-8")
    assert "vocabulary 79,458" in open_data and "Training hyper-parameters: not published" in open_data
    llama2 = (ROOT / "model_cards" / "BELLE-Llama2-13B-chat-0.4M.md").read_text(encoding="utf-8")
    assert "huggingface-cli download BELLE-2/BELLE-Llama2-13B-chat-0.4M" in llama2 and "decrypt" not in llama2


def test_memory_table_is_the_estimate():
    for f in FACTS.values():
        info = registry.REGISTRY[f.registry]
        card = build_card(f.name)
        rows = table(card, "Memory")
        q = f.quantized
        expected = estimate(info.model_type, info.config, 128, sym=q.sym if q else True)
        assert [(r[0].replace(" (this model)", ""), as_int(r[1]), as_int(r[3])) for r in rows[:len(expected)]] == \
               [(e.name, e.file_bytes, e.resident_bytes) for e in expected]
        marked = [r[0] for r in rows if "(this model)" in r[0]]
        rest = {"float32": "fp32", "float16": "fp16"}[q.rest_dtype] if q else None
        assert marked == ([f"int{q.bits}-g128 (rest {rest}) (this model)"] if q else ["fp16 (this model)"])


def test_predicted_files_add_up_to_the_estimate():
    """Two independent computations from the shapes: the files table's tensor bytes and estimate()'s file bytes."""
    for f in FACTS.values():
        info = registry.REGISTRY[f.registry]
        p = f.quantized  # BELLE's GPTQ files: their grid, and the dtype their other tensors keep on import
        q = QuantConfig(bits=p.bits, group_size=128, sym=p.sym, embedding="keep") if p else None
        dtype = p.rest_dtype if p else "float16"
        tensor_bytes = sum(nbytes(d, s) for _, d, s in checkpoint_tensors(info.model_type, info.config, dtype, q))
        key = f"int{q.bits}-g128 (rest {dtype.replace('float', 'fp')})" if q else "fp16"
        rows = estimate(info.model_type, info.config, sym=q.sym if q else True)
        assert tensor_bytes == next(e.file_bytes for e in rows if e.name == key)
        files = {r[0]: r[1] for r in table(build_card(f.name), "Files")}
        weights = sum(as_int(v) for k, v in files.items() if k.endswith(".safetensors"))
        assert 0 < weights - tensor_bytes < 200_000  # only the JSON headers on top


# ------------------------------------------------------------------------- predicted sizes vs. real files
def _tiny(kind):
    paddle.seed(0)
    if kind == "bloom":
        return BloomForCausalLM(BloomConfig(vocab_size=300, hidden_size=64, n_layer=3, n_head=4))
    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        tie_word_embeddings=kind == "llama-tied"))


@pytest.mark.parametrize("kind", ["bloom", "llama", "llama-tied"])
@pytest.mark.parametrize("quant", [None, QuantConfig(bits=4, group_size=16, method="rtn"),
                                   QuantConfig(bits=8, group_size=32, method="rtn", sym=False)], ids=["float", "q4", "q8asym"])
def test_predicted_files_are_what_save_pretrained_writes(tmp_path, kind, quant):
    model = _tiny(kind)
    if quant is not None:
        quantize_model(model, quant, progress=False)
    shard = None if quant else 60_000  # sharded float checkpoints: the index too
    model.save_pretrained(tmp_path, max_shard_size=shard)
    config = read_config(tmp_path)
    predicted = weight_files(checkpoint_tensors(config["model_type"], config, "float32", quant), shard)
    real = sorted(p.name for p in tmp_path.iterdir() if p.name != "config.json")
    assert sorted(n for n, _ in predicted) == real and (quant or len(real) > 2)
    for name, size in predicted:
        assert (tmp_path / name).stat().st_size == size, name
    names = [n for n, _, _ in checkpoint_tensors(config["model_type"], config, "float32", quant)]
    written = [n for f in real if f.endswith(".safetensors") for n in read_safetensors_header(tmp_path / f)[0]]
    assert names == written


# --------------------------------------------------------------------------------- cards of directories
def test_card_of_a_directory_measures_its_files(bloom_dir, tmp_path):
    out = tmp_path / "README.md"
    rc, _, err = run_cli("card", "--model", bloom_dir, "--out", out, "--base", "BLOOMZ-7B1-mt", "--data-size",
                              "10k", "--data", "a few BELLE records", "--hyper", "learning rate=1e-3")
    assert rc == 0, err
    card = out.read_text(encoding="utf-8")
    rows = table(card, "Files")
    files = {p.relative_to(bloom_dir).as_posix(): p.stat().st_size for p in bloom_dir.rglob("*") if p.is_file()}
    assert {r[0]: as_int(r[1]) for r in rows[:-1]} == files and "hf-tokenizer/tokenizer.json" in files
    assert as_int(rows[-1][1]) == sum(files.values())
    config = read_config(bloom_dir)
    memory = table(card, "Memory")
    assert [(r[0].replace(" (this model)", ""), as_int(r[1]), as_int(r[3])) for r in memory] == \
           [(e.name, e.file_bytes, e.resident_bytes) for e in estimate("bloom", config)]
    details = dict(table(card, "Model details"))
    assert details["base model"] == "BLOOMZ-7B1-mt" and details["data size"] == "10k"
    assert dict(table(card, "Training hyper-parameters")) == {"learning rate": "1e-3"}
    assert "given to `paddle-belle card`" in card


def test_card_in_its_own_directory_is_not_listed(bloom_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(bloom_dir, d)
    (d / "README.md").write_text("an old card")
    rc, _, err = run_cli("card", "--model", d, "--out", d / "README.md", "--force")
    assert rc == 0, err
    card = (d / "README.md").read_text(encoding="utf-8")
    assert "README.md" not in [r[0] for r in table(card, "Files")]
    assert "| base model | not given" in card and "Training hyper-parameters: not given" in card


def test_card_of_a_quantized_directory(quantized_dirs, tmp_path):
    d = quantized_dirs[4]
    card = build_card(str(d))
    assert "| quantization | RTN, 4-bit, group size 16" in card
    assert {r[0]: as_int(r[1]) for r in table(card, "Files")[:-1]} == \
           {p.name: p.stat().st_size for p in d.iterdir() if p.is_file()}


def test_directory_named_like_a_belle_model_gets_its_facts(bloom_dir, tmp_path):
    d = tmp_path / "BELLE-7B-0.6M"
    shutil.copytree(bloom_dir, d)
    card = build_card(str(d))
    assert card.startswith("# BELLE-7B-0.6M\n") and dict(table(card, "Training hyper-parameters"))["batch size"] == "64"
    assert "| data size | 0.6M |" in card


def test_bundled_tiny_model_card(tmp_path):
    bundled = registry.BUNDLED / "belle-tiny-zh"
    if not (bundled / "config.json").is_file():
        pytest.skip("belle-tiny-zh is not built in this checkout")
    d = tmp_path / "belle-tiny-zh"
    shutil.copytree(bundled, d)
    out = d / "CARD.md"
    rc, _, err = run_cli("card", "--model", d, "--out", out)
    assert rc == 0, err
    card = out.read_text(encoding="utf-8")
    info = json.loads((d / "build_info.json").read_text(encoding="utf-8"))
    assert "## How it was trained" in card and f"| seed | {info['seed']} |" in card
    assert "small demonstration model" in card


def test_build_info_is_summarised(bloom_dir, tmp_path):
    """The record tools/build_tiny_model.py writes (run_stage's info per stage, losses, samples)."""
    d = tmp_path / "tiny"
    shutil.copytree(bloom_dir, d)
    info = {"seed": 0, "parameters": 4_700_000, "vocab_size": 6000, "sft_records": 3000,
            "pretrain": {"steps": 120, "first_loss": 8.61, "last_loss": 4.123456, "tokens_per_second": 900.0, "minutes": 3.5},
            "sft": {"steps": 80, "first_loss": 4.0, "last_loss": 2.5, "tokens_per_second": 800.0, "minutes": 2.0},
            "held_out_loss_before_sft": 3.9, "held_out_loss": 2.7,
            "samples": [{"question": "你好", "answer": "你好！"}],
            "replies": [{"prompt": "你好", "seeds": 40, "cjk": 40, "runs": 0}]}
    (d / "build_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    rows = dict(table(build_card(str(d)), "How it was trained"))
    assert rows["pretrain.steps"] == "120" and rows["pretrain.last_loss"] == "4.123" and rows["sft.first_loss"] == "4"
    assert rows["held_out_loss"] == "2.7" and rows["seed"] == "0" and not any(k.startswith(("samples", "replies")) for k in rows)


# ------------------------------------------------------------------------------------------- snippets
def snippet_of(card: str) -> str:
    return card.split("```python\n", 1)[1].split("```", 1)[0]


def run_snippet(code: str, model_dir: Path) -> str:
    code, n = re.subn(r"^model_path = .*$", f"model_path = {str(model_dir)!r}", code, flags=re.M)
    assert n == 1
    lines = iter(["你好，请介绍一下你自己", ""])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "card-snippet", "exec"), {"input": lambda *a: next(lines), "__name__": "__main__"})
    return out.getvalue()


def test_every_card_snippet_runs(bloom_dir, llama_dir, quantized_dirs, tmp_path):
    cards = {f.title: (build_card(f.name), f) for f in FACTS.values()}
    cards["local"] = (build_card(str(bloom_dir)), None)
    for title, (card, f) in cards.items():
        if f is None:
            model_dir = bloom_dir
        elif f.quantized:
            model_dir = quantized_dirs[f.quantized.bits]
        else:
            model_dir = llama_dir if registry.REGISTRY[f.registry].model_type == "llama" else bloom_dir
        printed = run_snippet(snippet_of(card), model_dir)
        assert printed.startswith("Human:\nAssistant:\n"), (title, printed[:200])
        assert printed.rstrip().endswith("Human:"), title
        assert "max_new_tokens=200, do_sample=True, top_k=30, top_p=0.85, temperature=0.35, repetition_penalty=1.2" \
            in card
        assert "paddle-belle chat --model " in card


def test_every_registry_model_gets_a_card_whose_commands_make_what_it_loads():
    for info in registry.REGISTRY.values():
        if info.bundled:
            continue
        card = build_card(info.name)
        commands = card.split("```bash\n", 1)[1].split("```", 1)[0]
        convert = next(line.split() for line in commands.splitlines() if line.startswith("paddle-belle convert"))
        src, dst = convert[2].rstrip("/"), convert[3]
        assert src.lower() != dst.lower() and dst == info.name  # distinct even on a case-insensitive file system
        assert f"model_path = {info.name!r}" in card


# ---------------------------------------------------------------------------------------------- errors
def test_bad_input_is_one_line(bloom_dir, tmp_path):
    rc, _, err = run_cli("card", "--model", "gpt-17", "--out", tmp_path / "a.md")
    assert rc == 1 and "gpt-17" in err and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_cli("card", "--model", empty, "--out", tmp_path / "a.md")
    assert rc == 1 and "config.json" in err and err.count("\n") == 1
    rc, _, err = run_cli("card", "--model", bloom_dir, "--out", tmp_path / "a.md", "--facts", "belle-99b")
    assert rc == 1 and "belle-99b" in err
    rc, _, err = run_cli("card", "--model", bloom_dir, "--out", tmp_path / "a.md", "--hyper", "oops")
    assert rc == 1 and "KEY=VALUE" in err
    assert not (tmp_path / "a.md").exists()


def test_existing_out_needs_force(bloom_dir, tmp_path):
    out = tmp_path / "README.md"
    out.write_text("mine")
    rc, _, err = run_cli("card", "--model", "belle-7b-2m", "--out", out)
    assert rc == 1 and "--force" in err and out.read_text() == "mine"
    rc, _, err = run_cli("card", "--model", "belle-7b-2m", "--out", out, "--force")
    assert rc == 0 and out.read_text(encoding="utf-8") == build_card("belle-7b-2m")
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary file left behind


def test_models_lists_the_new_entry():
    rc, out, _ = run_cli("models")
    assert rc == 0 and any(line.startswith("belle-llama-7b-0.6m ") for line in out.splitlines())
