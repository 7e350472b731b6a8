from pathlib import Path

from setuptools import find_packages, setup

version = {}
for line in Path("paddle_belle/__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

setup(
    name="paddle_belle",
    version=version["__version__"],
    description="The BELLE chat models and their workflow, native on PaddlePaddle + PaddleNLP",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["paddle_belle", "paddle_belle.*"]),
    # belle-tiny-zh (the default model) and BELLE's data files (ODC-By, attribution in data_files/README.md) ship
    # inside the package.
    # The native CPU kernels ship as C++ source, compiled on first use (paddle_belle/kernels): installing never
    # needs a compiler.
    package_data={"paddle_belle": ["assets/*/*"],
                  "paddle_belle.data_files": ["*.json", "*.txt", "*.md", "DATA_LICENSE"],
                  "paddle_belle.kernels": ["*.cc", "*.h"],
                  "paddle_belle.serve": ["static/*"]},  # the chat page: plain HTML/JS/CSS, nothing from a CDN
    # PaddleNLP 2.8.1 is frozen and picky: newer huggingface_hub, aistudio-sdk, datasets, pyarrow or numpy 2 each
    # break `import paddlenlp`, and setuptools >= 81 drops pkg_resources, which paddleslim imports.
    # Paddle itself is an extra: the build differs by hardware (paddlepaddle, paddlepaddle-gpu, -xpu, custom
    # NPU plugins) and pip would install the CPU one over a GPU one if it were a plain dependency.
    install_requires=[
        "paddlenlp==2.8.1",
        "huggingface_hub==0.23.5",
        "aistudio-sdk==0.1.7",
        "datasets==2.19.2",
        "pyarrow==15.0.2",
        "numpy>=1.23,<2",
        "setuptools<81",
        "decorator",
        "sentencepiece>=0.1.99,<0.3",
        "safetensors>=0.4.3,<0.9",
        "regex",
        "pyyaml",  # train/config.py: training configs (also a datasets dependency)
        "tokenizers>=0.19,<0.21",
        "requests>=2.28",
        "filelock>=3.8",
        "tqdm>=4.60",
        "scipy",  # quant/gptq.py: LAPACK's triangular inverse
        "threadpoolctl>=3.1",  # holds numpy's BLAS (the CPU tied head) to --threads
        "openai>=1.0",
        # serve: the HTTP stack (PaddleNLP 2.8.1 already depends on fastapi and uvicorn); pydantic v2 API
        "fastapi>=0.100",
        "uvicorn>=0.23",
        "pydantic>=2",
        # datagen: BM25 near-duplicate removal, and jieba (a PaddleNLP dependency) to cut Chinese into words
        "rank-bm25>=0.2.2",
        "jieba>=0.42",
        "gguf==0.19.0",  # GGUF import and export (paddle-belle convert): llama.cpp's reader, writer and quantizers
        "matplotlib>=3.8,<3.12",  # loss.png (Agg, headless); every version in the range runs on numpy 1.x
        "jinja2>=3.1",  # prompts.template_style: a model's own chat template (a PaddleNLP dependency already)
    ],
    extras_require={
        "cpu": ["paddlepaddle==3.3.1"],
        # selenium drives Debian's chromium + chromium-driver (apt; .ci/run installs them) through the chat page.
        # llama-cpp-python: llama.cpp itself, to run our GGUF exports; PyPI has only its sdist, built with cmake
        # (pip caches the wheel; .ci/run's CMAKE_ARGS skip the parts the tests do not use).
        # paddleslim: the reference our GPTQ is tested equal to (quant/gptq.py restates it in numpy: its own loop was
        # slow and failed on CPU), so only the tests import it; it would pull opencv-python and scikit-learn into
        # every install.
        "test": ["torch==2.13.0", "transformers==4.46.3", "pytest", "selenium>=4.15", "llama-cpp-python==0.3.36",
                 "paddleslim==2.6.0"],
    },
    entry_points={"console_scripts": ["paddle-belle=paddle_belle.cli:main"]},
)
