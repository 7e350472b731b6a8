import ctypes
import threading
from pathlib import Path

import paddle

from paddle_belle.cpu import set_cpu_threads, use_cpu_threads_here


def test_a_new_thread_gets_the_thread_count():
    # Paddle's own CPU kernels run on Intel's OpenMP (libiomp5, shipped in Paddle's wheel), whose thread count is the
    # calling thread's: a thread started later begins from Paddle's OMP_NUM_THREADS=1 (the server's model thread did)
    iomp = ctypes.CDLL(str(Path(paddle.__file__).parent / "libs" / "libiomp5.so"))
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
