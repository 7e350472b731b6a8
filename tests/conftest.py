import os
import sys

# tests/reference.py holds the shared helpers; keep Paddle's logs and PaddleNLP's caches out of the way.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("GLOG_minloglevel", "2")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PPNLP_HOME", str(tmp_path_factory.getbasetemp() / "ppnlp_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_datasets"))
