import functools
import hashlib
import json
import os
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from reference import tiny_belle_dir

from paddle_belle import AutoTokenizer
from paddle_belle.data import build_dataset, fetch_release, load_conversations

SCHOOL_MATH = str(Path(__file__).parents[1] / "fixtures" / "belle" / "school_math_40.jsonl")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("belle")
    tiny_belle_dir(d)
    return AutoTokenizer.from_pretrained(d)


def test_belle_school_math_records_tokenise_with_a_summary(tok):
    ds, summary = build_dataset([SCHOOL_MATH], tok, "belle-v2", max_length=64)
    assert summary.records == 40 and summary.bad == 0 and summary.samples + summary.unsupervised == 40
    assert summary.samples == len(ds) > 0
    assert all(len(row["input_ids"]) == len(row["labels"]) <= 64 for row in ds)
    assert summary.tokens == sum(len(r) for r in ds["input_ids"]) and 0 < summary.supervised_tokens < summary.tokens
    assert str(summary).startswith("40 records: 0 malformed skipped")


def bad_file(tmp_path) -> Path:
    lines = [
        json.dumps({"instruction": "1+1=?", "input": "", "output": "2"}),
        json.dumps({"instruction": "2+2=?", "input": ""}),  # missing output
        "",
        '{"instruction": "broken", "output": ',  # broken JSON
        json.dumps({"instruction": "3+3=?", "output": 6}),  # wrong type
        json.dumps({"instruction": "4+4=?", "output": "8"}),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_bad_record_names_file_and_line(tmp_path):
    path = bad_file(tmp_path)
    with pytest.raises(ValueError, match=rf"^{path}:2: missing field 'output' \(--skip-bad"):
        load_conversations([str(path)])


def test_skip_bad_counts_every_kind_of_bad_record(tmp_path, tok):
    path = bad_file(tmp_path)
    ds, summary = build_dataset([str(path)], tok, "belle", max_length=64, skip_bad=True)
    assert (summary.records, summary.bad, summary.samples) == (5, 3, 2)
    rows = load_conversations([str(path)], skip_bad=True)
    assert [e.split(": ", 1)[0] for e in rows["error"] if e] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    assert "broken JSON" in rows["error"][2] and "must be a string, not int" in rows["error"][3]


def test_editing_a_file_is_not_hidden_by_the_cache(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    assert len(load_conversations([str(path)])) == 1
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps({"input": "c", "target": "d"}))
    assert len(load_conversations([str(path)])) == 2


def test_streaming_reads_lazily_and_raises_at_the_bad_record(tmp_path, tok):
    ds, summary = build_dataset([SCHOOL_MATH], tok, "belle-v2", max_length=64, streaming=True)
    assert summary is None and len(next(iter(ds))["input_ids"]) > 0
    with pytest.raises(ValueError, match=":2: missing field"):
        list(load_conversations([str(bad_file(tmp_path))], streaming=True))


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """PaddleNLP's dataset mirror on 127.0.0.1: serves files with Baidu object storage's MD5 ETag."""
    root = tmp_path / "mirror"
    (root / "BelleGroup").mkdir(parents=True)

    class Handler(SimpleHTTPRequestHandler):
        def end_headers(self):
            path = Path(self.translate_path(self.path))
            if path.is_file():
                self.send_header("ETag", '"%s"' % hashlib.md5(path.read_bytes()).hexdigest())
            super().end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PADDLE_BELLE_DATA_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield root / "BelleGroup"
    server.shutdown()


def test_release_by_name_downloads_verifies_unpacks_and_caches(mirror, tok, monkeypatch):
    with zipfile.ZipFile(mirror / "school_math_0.25M.zip", "w") as z:
        z.write(SCHOOL_MATH, "school_math_0.25M.json")
    ds, summary = build_dataset(["belle:school_math_0.25M"], tok, "belle-v2", max_length=64)
    assert summary.records == 40
    (mirror / "school_math_0.25M.zip").unlink()
    monkeypatch.setenv("PADDLE_BELLE_OFFLINE", "1")  # the cache serves the second call
    assert len(load_conversations(["belle:school_math_0.25M"])) == 40
    with pytest.raises(FileNotFoundError, match="not in the cache"):
        fetch_release("train_2M_CN")


def test_release_whose_bytes_do_not_match_the_md5_is_refused(mirror, monkeypatch):
    with zipfile.ZipFile(mirror / "train_1M_CN.zip", "w") as z:
        z.writestr("train_1M_CN.json", "{}")
    import paddle_belle.data.sources as sources
    monkeypatch.setattr(sources, "_etag_md5", lambda url: "0" * 32)
    with pytest.raises(ValueError, match="md5 .* expected 0{32}; the download was deleted"):
        fetch_release("train_1M_CN")
    cache = Path(os.environ["PPNLP_HOME"]) / "datasets" / "BelleGroup"
    assert not [p.name for p in cache.iterdir() if "train_1M_CN" in p.name]  # nothing half written


def test_unknown_release_and_missing_file_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown BELLE release 'train_9M'"):
        load_conversations(["belle:train_9M"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_conversations([str(tmp_path / "nope.jsonl")])
