import ctypes
import threading
from pathlib import Path

import paddle

from paddle_belle.cpu import SERIAL_ELEMENTS, serial, set_cpu_threads, use_cpu_threads_here

IOMP = Path(paddle.__file__).parent / "libs" / "libiomp5.so"


def test_a_new_thread_gets_the_thread_count():
    # Paddle's own CPU kernels run on Intel's OpenMP (libiomp5, shipped in Paddle's wheel), whose thread count is the
    # calling thread's: a thread started later begins from Paddle's OMP_NUM_THREADS=1 (the server's model thread did)
    iomp = ctypes.CDLL(str(IOMP))
    set_cpu_threads(2)
    try:
        seen = []

        def model_thread():
            seen.append(iomp.omp_get_max_threads())
            use_cpu_threads_here()
            seen.append(iomp.omp_get_max_threads())

        t = threading.Thread(target=model_thread)
        t.start()
        t.join()
        assert seen == [1, 2]
    finally:
        set_cpu_threads()


def test_small_work_runs_on_one_thread_and_gives_the_threads_back():
    """cpu.serial: a decoding row's layer norm on one of Paddle's OpenMP threads, larger work on all; the result is
    Paddle's op's, and the count is restored after the op, also when it raises."""
    iomp = ctypes.CDLL(str(IOMP))
    set_cpu_threads(2)
    try:
        seen = []
        probe = lambda: seen.append(iomp.omp_get_max_threads())  # noqa: E731
        serial(1024, probe), serial(SERIAL_ELEMENTS + 1, probe), probe()
        assert seen == [1, 2, 2]
        try:
            serial(1024, lambda: 1 / 0)
        except ZeroDivisionError:
            pass
        assert iomp.omp_get_max_threads() == 2
        x, w, b = paddle.randn([1, 1, 1024]), paddle.randn([1024]), paddle.randn([1024])
        alone = serial(1024, paddle._C_ops.layer_norm, x, w, b, 1e-5, 2)
        ref = paddle.nn.functional.layer_norm(x, [1024], w, b, 1e-5)
        assert bool((alone == ref).all())
    finally:
        set_cpu_threads()
