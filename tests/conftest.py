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


@pytest.fixture(autouse=True)
def _kernel_switches(monkeypatch):
    """paddle_belle.kernels reads its environment switches once (kernels.reload); a test that sets or deletes one
    with monkeypatch gets it read again at once, and every test starts from the environment as restored."""
    from paddle_belle import kernels

    kernels.reload()
    for name in ("setenv", "delenv"):
        def changed(*args, _change=getattr(monkeypatch, name), **kwargs):
            _change(*args, **kwargs)
            kernels.reload()

        setattr(monkeypatch, name, changed)
