import pytest

from paddle_belle import kernels


@pytest.fixture
def needs_kernels():
    if kernels.cpu_kernels() is None:
        pytest.skip("the native CPU kernels are not available here")


@pytest.fixture
def count_calls(monkeypatch):
    """count_calls(*names): a one-item list counting the calls of those ops of paddle_belle.kernels from then on."""
    def start(*names):
        count = [0]
        for name in names:
            def counted(*args, op=getattr(kernels, name)):
                count[0] += 1
                return op(*args)

            monkeypatch.setattr(kernels, name, counted)
        return count

    return start
