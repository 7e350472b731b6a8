"""Native CPU kernels: weight-only matmuls (cpu_matmul.cc), decode attention (decode_attention.cc) and a whole BLOOM
or LLaMA decoder layer for a decoding step (decoder_layer.cc) as a Paddle custom operator, compiled on first use.

``cpu_kernels()`` returns the loaded operator module, or None when the kernels are off (``PADDLE_BELLE_KERNELS=0``;
the switches are read once, ``reload()`` reads them again) or cannot be built here (no C++ compiler, a failed build:
one warning, then the pure-Paddle paths run). The build goes to Paddle's extension cache (``PADDLE_EXTENSION_DIR``, by default
~/.cache/paddle_extensions) under a name carrying a hash of the source and flags, so it happens once per machine
and again only when the source changes; a later process loads the cached library directly.

The library links the OpenMP runtime Paddle's own CPU kernels use (Intel's libiomp5, shipped in Paddle's x86
wheels) where there is one: a second runtime (GCC's libgomp) would keep its own threads, which then contend with
MKL's spinning ones (measured on 2 cores: 10x slower), and would ignore ``paddle.base.core.set_num_threads``.
With one runtime the kernels use exactly the threads Paddle's matmul would.

Ops (float32 x [..., K] -> float32 [..., N]):

- ``quant_matmul(x, qweight, scales, zeros, bits, group_size, bias=None)``: the packed format of quant/format.py,
  all bit widths (2, 3, 4, 8), symmetric (zeros None) or asymmetric; act-order is the caller's (permute x first).
  With ``PADDLE_BELLE_INT8_ACTIVATIONS=1`` (opt-in), 4- and 8-bit codes multiply x quantized to int8 in blocks of
  32 (``int8_activations``; cpu_matmul.cc says why and how);
- ``dense_matmul(x, w, bias=None)``: w [K, N] float32, bfloat16 or float16, meant for small M (decode).
- ``decode_attention(...)``: a decoding step's KV-cache writes and attention (models/base.py DecodeStep);
- ``bloom_block(...)``, ``llama_layer(...)``: a layer's whole decoding step (models/bloom.py BloomBlock.decode,
  models/llama.py LlamaDecoderLayer.decode).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import paddle

SOURCES = [Path(__file__).with_name(name) for name in ("cpu_matmul.cc", "decode_attention.cc", "decoder_layer.cc")]
HEADERS = [Path(__file__).with_name(name) for name in ("kernels.h", "vec16.h")]  # shared by the sources; hashed
CXX_FLAGS = ["-fopenmp", "-O3", "-std=c++17", "-g0"]  # -g0: Python's own flags ask for debug info

_loaded = {}  # "module": the op module or None, once a load was tried in this process
_switches = {}  # the environment switches below, read once


def reload():
    """Read PADDLE_BELLE_KERNELS and PADDLE_BELLE_INT8_ACTIVATIONS again. They are read once, at first use, not at
    every call: a decoding step checks them for every Linear (two reads of os.environ each, ~190 a bloom-560m step)."""
    _switches.clear()


def _switch(name: str, default: str, on: bool) -> bool:
    value = _switches.get(name)
    if value is None:
        words = ("1", "true", "yes", "on") if on else ("0", "false", "no", "off")
        value = _switches[name] = (os.environ.get(name, default).strip().lower() in words) == on
    return value


def enabled() -> bool:
    return _switch("PADDLE_BELLE_KERNELS", "1", on=False)


def cpu_kernels():
    """The compiled kernel module, or None (kernels disabled, or no build possible here: warned once)."""
    if not enabled():
        return None
    if "module" not in _loaded:
        try:
            _loaded["module"] = _load()
        except Exception as e:  # noqa: BLE001 (any build failure means: run without the kernels)
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            warnings.warn(f"paddle_belle: native CPU kernels unavailable ({reason}); using the slower Paddle path",
                          RuntimeWarning, stacklevel=2)
            _loaded["module"] = None
    return _loaded["module"]


def cpu_inference(x) -> bool:
    """Whether ``x`` is what the kernels compute with: a float32 CPU tensor that needs no gradient (the ops have
    none). QuantLinear's Paddle path takes the kernels' int8-activation numbers for such inputs too. (Cheapest checks
    first: x.place builds a Place object, 0.5 us; this runs for every Linear of a decoding step.)"""
    return x.dtype == paddle.float32 and (x.stop_gradient or not paddle.is_grad_enabled()) and x.place.is_cpu_place()


def usable(x) -> bool:
    """Whether the kernels can compute with ``x``: cpu_inference(x), and the kernels built here. Cheap checks first:
    the last may build them."""
    return cpu_inference(x) and cpu_kernels() is not None


def int8_activations(bits: int) -> bool:
    """Whether ``bits``-bit weights multiply int8-quantized activations (integer dot products, as llama.cpp's
    q4_0/q8_0 do): 4 and 8 bits with ``PADDLE_BELLE_INT8_ACTIVATIONS=1``. The native kernel and QuantLinear's
    Paddle path then compute the same integers (cpu_matmul.cc, "int8 activations"). Off by default: issue 14 allows
    it only where the test models' greedy ids stay those of the float path, and they part at near-ties; and one row
    of 8-bit codes is slower with it (README, "Int8 activations")."""
    return bits in (4, 8) and _switch("PADDLE_BELLE_INT8_ACTIVATIONS", "0", on=True)


def quant_matmul(x, qweight, scales, zeros, bits: int, group_size: int, bias=None, int8_x: bool | None = None,
                 tiled: bool = False):
    """x [..., K] @ the packed weight (quant/format.py) + bias, with the native kernel; group_size > 0 (K per
    channel). A bias that is not float32 is added afterwards. ``int8_x``: the integer path (4 and 8 bits only);
    None: ``int8_activations(bits)``. ``tiled``: qweight's bytes are in the kernels' tile order (retile)."""
    fused = bias is None or bias.dtype == paddle.float32
    int8_x = int8_activations(bits) if int8_x is None else bool(int8_x and bits in (4, 8))
    out = _call("belle_quant_matmul", x, qweight, scales, zeros, bias if fused else None, bits, group_size, int8_x,
                tiled)
    return out if fused else out + bias


def retile(qweight, in_features: int, bits: int, group_size: int, to_tiles: bool):
    """Permute packed codes [stored rows, N] (``in_features`` inputs) in place, from the checkpoint's order into the
    order the kernels read fastest (cpu_matmul.cc, "Tiles"), or back (``to_tiles=False``). Same bytes, same
    memory. ``bits`` 0: a dense weight [in_features, N] (float32, bfloat16, float16), whose fastest order is its
    transpose [N, in_features] (the shape stays). (Also with the kernels switched off since: a weight they left in
    their order still goes back.)"""
    if _loaded.get("module") is None and cpu_kernels() is None:
        raise RuntimeError("paddle_belle: the native CPU kernels are not available")
    try:
        paddle._C_ops._run_custom_op("belle_retile", qweight, int(in_features), bits, group_size, bool(to_tiles))
    except OSError as e:
        raise ValueError(str(e).strip().splitlines()[0]) from None


def dense_matmul(x, w, bias=None, transposed: bool = False):
    """x [..., K] @ w [K, N] (float32, bfloat16 or float16) + bias (float32 [N]), with the native kernel.
    ``transposed``: w's bytes are in retile's order for a dense weight, its transpose [N, K]."""
    return _call("belle_dense_matmul", x, w, bias, transposed)


def rows_matmul(x, e, bias=None):
    """x [..., K] @ e^T for e [N, K] (float32, bfloat16 or float16; a tied LM head's embedding) + bias, with the
    native kernel."""
    return _call("belle_rows_matmul", x, e, bias)


def decode_attention(q, k, v, key_cache, value_cache, columns, mask, slopes=None, cos=None, sin=None):
    """One decoding step's attention (decode_attention.cc): writes each row's new key and value into the caches
    [B, kv_heads, length, head_dim] (in place) at ``columns`` [b], then attends over the keys ``mask`` [b, width]
    marks. q [b, n_head, 1, d] with k, v [b, kv_heads, 1, d]; or k = v = None and q BLOOM's fused qkv. ``slopes``:
    ALiBi's; ``cos``/``sin`` [b, d]: RoPE (models/llama.py rope). Returns [b, 1, n_head * d]."""
    return _call("belle_decode_attention", q, k, v, key_cache, value_cache, columns, mask, slopes, cos, sin)


def bloom_block(x, params, key_cache, value_cache, columns, mask, slopes, layout, epsilon: float,
                post_ln_residual: bool):
    """A whole BLOOM decoder layer for a decoding step (decoder_layer.cc): x [b, 1, hidden] -> [b, 1, hidden],
    writing the step's keys and values into the caches. ``params``: the two LayerNorms' weight and bias, then the
    four Linears' tensors as ``layout`` (three numbers each: quant/linear.py kernel_weight) describes them."""
    return _call("belle_bloom_block", x, params, key_cache, value_cache, columns, mask, slopes, list(layout),
                 float(epsilon), bool(post_ln_residual))


def llama_layer(x, params, key_cache, value_cache, columns, mask, cos, sin, layout, epsilon: float):
    """A whole LLaMA decoder layer for a decoding step (decoder_layer.cc), as bloom_block: ``params`` the two
    RMSNorms' weights, then the seven Linears' tensors; ``cos``/``sin`` [b, head_dim]: RoPE (models/llama.py)."""
    return _call("belle_llama_layer", x, params, key_cache, value_cache, columns, mask, cos, sin, list(layout),
                 float(epsilon))


def _call(op: str, x, *args):
    if _loaded.get("module") is None and cpu_kernels() is None:
        raise RuntimeError("paddle_belle: the native CPU kernels are not available")
    x = x if x.is_contiguous() else x.contiguous()  # the ops read x as one row-major block
    try:
        # What the generated op module does, without its wrapper (8 us a call, a third of a small layer's time).
        return paddle._C_ops._run_custom_op(op, x, *args)[0]
    except OSError as e:  # the op's own checks: "belle_...: what is wrong\n  [file:line]" -> one line
        raise ValueError(str(e).strip().splitlines()[0]) from None


# ------------------------------------------------------------------------------------------------ building
def _link_flags() -> list[str]:
    libs = Path(paddle.__file__).parent / "libs"
    own_runtime = ["-L" + str(libs), "-liomp5", "-Wl,-rpath," + str(libs)] if (libs / "libiomp5.so").exists() else []
    # -fopenmp stays: without libiomp5 it links libgomp; with it, libiomp5 comes first and serves the GOMP calls.
    return own_runtime + ["-fopenmp"]


def _load():
    import filelock

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # importing it warns "No ccache found"
        from paddle.utils.cpp_extension import get_build_directory, load

    ldflags = _link_flags()
    # A changed source, flags or Paddle build (its custom-op ABI) is a new name, hence a new build.
    built_for = (CXX_FLAGS, ldflags, paddle.__version__, paddle.version.commit, sys.version_info[:2])
    source = b"".join(s.read_bytes() for s in SOURCES + HEADERS)
    digest = hashlib.sha256(source + repr(built_for).encode()).hexdigest()[:12]
    name = f"belle_cpu_kernels_{digest}"
    root = get_build_directory()
    library = Path(root, name, name + ".so")
    with filelock.FileLock(os.path.join(root, name + ".lock")):
        if library.exists():  # built before (same source and flags): load it without Paddle's rebuild check
            try:
                from paddle.utils.cpp_extension.extension_utils import _import_module_from_library
                with _quiet():
                    return _import_module_from_library(name, str(library.parent))
            except Exception:  # noqa: BLE001 (a private helper that may change: fall back to a full load)
                pass
        with _quiet() as log:
            try:
                return load(name=name, sources=[str(s) for s in SOURCES], extra_cxx_cflags=list(CXX_FLAGS),
                            extra_ldflags=ldflags, build_directory=root)
            except Exception as e:
                log.seek(0)
                errors = [line for line in log.read().splitlines() if "error" in line.lower()]
                raise RuntimeError(f"{type(e).__name__}: {errors[0] if errors else e}") from None


@contextlib.contextmanager
def _quiet():
    """Paddle's build prints progress, setuptools' log and compiler output (a subprocess writing to our file
    descriptors): send them all to a temporary file, read on failure."""
    with tempfile.TemporaryFile("w+", errors="replace") as log:
        saved = [os.dup(1), os.dup(2)]
        sys.stdout.flush()
        sys.stderr.flush()
        level = logging.root.manager.disable
        logging.disable(logging.INFO)
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            # Python-level streams too: a caller may have replaced sys.stdout (contextlib.redirect_stdout), and
            # Paddle's load() print()s "Compiling user custom op..." there.
            with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                warnings.simplefilter("ignore")
                yield log
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            logging.disable(level)
