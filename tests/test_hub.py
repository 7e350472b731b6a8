"""hub.resolve and hub.download against a real HTTP server on 127.0.0.1 laid out like PaddleNLP's community bucket."""
import hashlib
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_belle import AutoModelForCausalLM, AutoTokenizer, BloomConfig, BloomForCausalLM, hub
from paddle_belle.tokenizer import BloomTokenizer, write_paddle_tokenizer
from reference import bloom_tokenizer_json

PREFIX = "/models/community/"
BELLE = "bellegroup/belle-7b-2m"
SHARDED = "someorg/tiny-sharded"
# belle-7b-2m's files on the PaddleNLP bucket, in the same layout.
BELLE_FILES = ["chat_template.json", "config.json", "merges.txt", "model_state.pdparams", "special_tokens_map.json",
               "tokenizer_config.json", "vocab.json"]
IDS = [[5, 17, 42, 3, 99]]
TEXT = "请给我讲一个关于人工智能的故事。"


class Bucket:
    """A threaded HTTP server for files under ``root``/<org>/<name>/, at PREFIX<org>/<name>/<file>.

    Range requests get 206/416 (unless ``ignore_range``), absent files 404; ``log`` records (file, Range) per
    request. Faults: ``drop[file] = n`` cuts the first response for ``file`` after n bytes; ``short[file] = n``
    ends every body of ``file`` at byte n. Both announce the full size in Content-Length, then close."""

    def __init__(self, root: Path):
        self.root, self.log, self.drop, self.short, self.ignore_range = root, [], {}, {}, False
        bucket = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                bucket.log.append((self.path.rsplit("/", 1)[-1], self.headers.get("Range")))
                file = bucket.root / self.path[len(PREFIX):]
                if not self.path.startswith(PREFIX) or not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                asked = self.headers["Range"] and not bucket.ignore_range
                start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"])[1]) if asked else 0
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                end = min(start + bucket.drop.pop(file.name, len(data)), bucket.short.get(file.name, len(data)))
                self.wfile.write(data[start:max(start, end)])  # HTTP/1.0: the connection closes after each response

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()

    def requests(self) -> Counter:
        return Counter(name for name, _ in self.log)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def random_weights(model, seed):
    # Large random values everywhere (PaddleNLP's init zeroes Linear weights), so a mis-loaded tensor shows.
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.set_value(rng.normal(0, 0.5, p.shape).astype("float32"))
    model.eval()


def logits(model):
    with paddle.no_grad():
        return model(paddle.to_tensor(IDS)).logits.numpy()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two checkpoints in the bucket's layout, the logits of each model as saved, and the HF tokenizer."""
    root = tmp_path_factory.mktemp("bucket")
    tokenizer_src = tmp_path_factory.mktemp("hf_tokenizer")
    hf_tokenizer = bloom_tokenizer_json(tokenizer_src)
    vocab_size = len(hf_tokenizer.get_vocab())
    expected = {}
    for name, seed, save in ((BELLE, 0, dict(safe_serialization=False)), (SHARDED, 1, dict(max_shard_size=4000))):
        model = BloomForCausalLM(BloomConfig(vocab_size=vocab_size, hidden_size=16, n_layer=2, n_head=2))
        random_weights(model, seed)
        model.save_pretrained(root / name, **save)
        write_paddle_tokenizer(tokenizer_src, root / name, "bloom")
        expected[name] = logits(model)
    assert sorted(p.name for p in (root / BELLE).iterdir()) == BELLE_FILES
    assert len(list((root / SHARDED).glob("model-*-of-*.safetensors"))) > 2
    return root, expected, hf_tokenizer


@pytest.fixture
def bucket(files, tmp_path, monkeypatch):
    server = Bucket(files[0])
    monkeypatch.setenv("PPNLP_ENDPOINT", server.url + "/")  # a trailing slash is allowed
    monkeypatch.setenv("PPNLP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PADDLE_BELLE_OFFLINE", raising=False)
    monkeypatch.delenv("AISTUDIO_BOS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "RETRY_WAIT", 0)
    yield server
    server.stop()


def cached(tmp_path, name=BELLE) -> Path:
    return tmp_path / "home" / "models" / name


def test_community_name_downloads_loads_and_is_cached(bucket, files, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(BELLE)
    np.testing.assert_array_equal(logits(model), files[1][BELLE])
    cache = cached(tmp_path)
    for file in BELLE_FILES:
        assert (cache / file).read_bytes() == (files[0] / BELLE / file).read_bytes(), file
    assert not list(cache.glob("*.part"))
    # Optional files the server lacks are asked for once and recorded, so nothing is requested a second time.
    assert bucket.requests()["generation_config.json"] == 1
    assert bucket.requests()["model.safetensors"] == 1  # probed before model_state.pdparams, in preference order
    requests_so_far = len(bucket.log)

    tokenizer = AutoTokenizer.from_pretrained(BELLE)
    assert isinstance(tokenizer, BloomTokenizer)
    ids = tokenizer(TEXT)["input_ids"]
    assert ids == files[2](TEXT)["input_ids"] and len(ids) > 5
    assert hub.resolve(BELLE) == cache
    assert len(bucket.log) == requests_so_far


def test_dropped_connection_resumes_with_range(bucket, files, tmp_path):
    bucket.drop["model_state.pdparams"] = 1000
    path = hub.resolve(BELLE)
    assert (path / "model_state.pdparams").read_bytes() == (files[0] / BELLE / "model_state.pdparams").read_bytes()
    assert ("model_state.pdparams", "bytes=1000-") in bucket.log
    assert not list(path.glob("*.part"))


def test_interrupted_download_keeps_the_part_and_the_next_call_resumes(bucket, files, tmp_path):
    url = f"{bucket.url}{PREFIX}{BELLE}/model_state.pdparams"
    dest = tmp_path / "model_state.pdparams"
    bucket.short["model_state.pdparams"] = 1500  # the body ends early on every request
    with pytest.raises(ConnectionError, match=re.escape(url) + ".*connection failed after 1500 bytes"):
        hub.download(url, dest)
    assert not dest.exists() and (tmp_path / "model_state.pdparams.part").stat().st_size == 1500
    assert bucket.requests()["model_state.pdparams"] == 1 + hub.RETRIES + 1  # retries that bring no bytes give up
    bucket.short.clear()
    hub.download(url, dest)
    assert dest.read_bytes() == (files[0] / BELLE / "model_state.pdparams").read_bytes()
    assert bucket.log[-1] == ("model_state.pdparams", "bytes=1500-")


def test_size_and_checksum_mismatches_delete_the_download(bucket, files, tmp_path):
    url = f"{bucket.url}{PREFIX}{BELLE}/vocab.json"
    data = (files[0] / BELLE / "vocab.json").read_bytes()
    dest = tmp_path / "vocab.json"
    with pytest.raises(ValueError, match=re.escape(url) + f".*{len(data)} bytes, expected {len(data) + 1}"):
        hub.download(url, dest, expected_size=len(data) + 1)
    with pytest.raises(ValueError, match=re.escape(url) + f".*sha256 {hashlib.sha256(data).hexdigest()}, expected 0+"):
        hub.download(url, dest, sha256="0" * 64)
    with pytest.raises(ValueError, match=re.escape(url) + f".*md5 {hashlib.md5(data).hexdigest()}, expected f+"):
        hub.download(url, dest, md5="F" * 32)
    assert not list(tmp_path.glob("vocab.json*"))
    hub.download(url, dest, expected_size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                 md5=hashlib.md5(data).hexdigest().upper())
    assert dest.read_bytes() == data


def test_part_longer_than_the_file_starts_over(bucket, files, tmp_path):
    url = f"{bucket.url}{PREFIX}{BELLE}/merges.txt"
    data = (files[0] / BELLE / "merges.txt").read_bytes()
    (tmp_path / "merges.txt.part").write_bytes(b"x" * (len(data) + 10))  # the server answers 416
    assert hub.download(url, tmp_path / "merges.txt").read_bytes() == data
    # A complete .part (say, a crash before the rename) is not downloaded again.
    (tmp_path / "again.txt.part").write_bytes(data)
    assert hub.download(url, tmp_path / "again.txt").read_bytes() == data
    assert bucket.log[-1] == ("merges.txt", f"bytes={len(data)}-")


def test_server_ignoring_range_restarts_from_zero(bucket, files, tmp_path):
    url = f"{bucket.url}{PREFIX}{BELLE}/merges.txt"
    (tmp_path / "merges.txt.part").write_bytes(b"stale bytes")
    bucket.ignore_range = True
    assert hub.download(url, tmp_path / "merges.txt").read_bytes() == (files[0] / BELLE / "merges.txt").read_bytes()
    assert bucket.log == [("merges.txt", "bytes=11-")]


def test_missing_required_file_names_the_url(bucket, files, tmp_path):
    url = f"{bucket.url}{PREFIX}nobody/nothing/config.json"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{url}: not found (HTTP 404)")):
        hub.resolve("nobody/nothing")


@pytest.mark.parametrize("variable", ["PADDLE_BELLE_OFFLINE", "AISTUDIO_BOS_OFFLINE"])
def test_offline_uses_the_cache_and_names_what_is_missing(bucket, files, tmp_path, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    with pytest.raises(FileNotFoundError, match="offline mode is on and .*belle-7b-2m lacks: config.json, "
                                                "model.safetensors.index.json or .* or model_state.pdparams, the tok"):
        hub.resolve(BELLE)
    assert bucket.log == []
    hub.resolve(BELLE, offline=False)
    bucket.stop()
    (cached(tmp_path) / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"belle-7b-2m lacks: merges.txt$"):
        AutoTokenizer.from_pretrained(BELLE)
    (cached(tmp_path) / "merges.txt").write_bytes((files[0] / BELLE / "merges.txt").read_bytes())
    model = AutoModelForCausalLM.from_pretrained(BELLE)
    np.testing.assert_array_equal(logits(model), files[1][BELLE])
    assert AutoTokenizer.from_pretrained(BELLE)("你好")["input_ids"]


def test_cache_root_is_ppnlp_home_with_user_expanded_and_empty_means_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PPNLP_HOME", "~/cache")
    assert hub.cache_root() == tmp_path / "cache"
    monkeypatch.setenv("PPNLP_HOME", "")
    assert hub.cache_root() == tmp_path / ".paddlenlp"


@pytest.mark.parametrize("name", ["../../x", "bellegroup/../x", "/etc/passwd", "a/b/c", "org/na me", "http://evil/x",
                                  "org/name?x=1", "org/name#x", "org/na%2e%2e", "org\\name", "org/a..b", "org/.x",
                                  "org/name\n", "org/", "name"])
def test_bad_names_are_refused_before_any_request(bucket, name):
    with pytest.raises(ValueError, match="is neither a local directory nor a model name like 'org/name'"):
        hub.resolve(name)
    assert bucket.log == []


def test_local_directory_is_returned_as_is_and_not_written(bucket, files, tmp_path):
    local = files[0] / BELLE
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in local.iterdir()}
    assert hub.resolve(str(local)) == local
    assert hub.resolve(local) == local
    assert hub.resolve(tmp_path / "nowhere") == tmp_path / "nowhere"  # a Path is never a model name
    np.testing.assert_array_equal(logits(AutoModelForCausalLM.from_pretrained(local)), files[1][BELLE])
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in local.iterdir()} == before
    assert bucket.log == [] and not (tmp_path / "home").exists()


def test_sharded_safetensors_fetch_every_shard(bucket, files, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(SHARDED)
    np.testing.assert_array_equal(logits(model), files[1][SHARDED])
    served = sorted(p.name for p in (files[0] / SHARDED).iterdir())
    assert sorted(p.name for p in cached(tmp_path, SHARDED).iterdir() if not p.name.startswith(".")) == served
    assert bucket.requests()["model.safetensors"] == 0  # the index is tried first
    shard = sorted(cached(tmp_path, SHARDED).glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"tiny-sharded lacks: {shard.name}$"):
        hub.resolve(SHARDED, offline=True)
    hub.resolve(SHARDED)
    assert shard.is_file() and bucket.requests()[shard.name] == 2


def test_index_naming_a_path_is_refused(bucket, files, tmp_path):
    bad = tmp_path / "bucket" / "evil" / "model"
    bad.mkdir(parents=True)
    (bad / "config.json").write_bytes((files[0] / BELLE / "config.json").read_bytes())
    (bad / "model.safetensors.index.json").write_text('{"weight_map": {"w": "../../../escaped"}}')
    bucket.root = tmp_path / "bucket"
    with pytest.raises(ValueError, match="weight_map names '../../../escaped', which is not a plain file name"):
        hub.resolve("evil/model")
    assert "escaped" not in {name for name, _ in bucket.log}


def test_concurrent_resolves_download_each_file_once(bucket, tmp_path):
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(hub.resolve, [BELLE] * 4)) == [cached(tmp_path)] * 4
    assert bucket.requests()["model_state.pdparams"] == 1 and bucket.requests()["config.json"] == 1


@pytest.mark.parametrize("fault", ["404", "dropped"])
def test_a_failed_download_leaves_no_lock_or_empty_directories(bucket, files, tmp_path, fault):
    home = tmp_path / "home"
    name = "nobody/nothing" if fault == "404" else BELLE
    bucket.short["config.json"] = 0  # (dropped) every response for config.json closes before its first byte
    with pytest.raises(FileNotFoundError if fault == "404" else ConnectionError):
        hub.resolve(name)
    assert not home.exists()  # $PPNLP_HOME, models/, the org and the model directory were all made by the call
    # A cache someone already filled keeps its files and lock when a later call fails.
    (home / "models" / "keep").mkdir(parents=True)
    bucket.short.clear()
    path = hub.resolve(BELLE)
    before = sorted(p.name for p in path.iterdir())
    (path / "merges.txt").unlink()
    bucket.short["merges.txt"] = 100
    with pytest.raises(ConnectionError):
        hub.resolve(BELLE)
    # what was there stays, and the 100 bytes that came are kept for the next call to resume from
    assert sorted(p.name for p in path.iterdir()) == sorted(set(before) - {"merges.txt"} | {"merges.txt.part"})
    with pytest.raises(FileNotFoundError):
        hub.resolve("nobody/nothing")
    assert sorted(p.name for p in (home / "models").iterdir()) == ["bellegroup", "keep"]
