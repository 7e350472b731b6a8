"""`convert --verify`: our model on the PaddleNLP side against transformers on the HF side. Apart from engine.py
because it loads our model, and loading a checkpoint uses the engine (an HF-layout directory is read through its
name tables): engine.py importing the model would be an import cycle."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def verify_imports():
    """torch and transformers, which verifying needs (the test extra), or a one-line error."""
    try:
        import torch
        import transformers
    except ImportError:
        raise RuntimeError("--verify needs torch and transformers: pip install 'paddle_belle[test]'") from None
    return torch, transformers


def verify_logits(paddle_dir: Path, hf_dir: Path, n_tokens: int = 8) -> float:
    """Max |Δlogits| / max(1, |logits|) between our model on ``paddle_dir`` and transformers on ``hf_dir``."""
    torch, transformers = verify_imports()
    import paddle

    from paddle_belle.auto import AutoModelForCausalLM

    ours = AutoModelForCausalLM.from_pretrained(paddle_dir, dtype="float32")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    ids = np.random.default_rng(0).integers(0, ours.config.vocab_size, (1, n_tokens))
    with paddle.no_grad():
        a = ours(paddle.to_tensor(ids)).logits.numpy()
    with torch.no_grad():
        b = theirs(torch.tensor(ids)).logits.numpy()
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))
