"""HF <-> PaddleNLP checkpoint conversion (name tables in arch.py, the streaming engine in engine.py)."""
from paddle_belle.convert.engine import convert, verify_logits

__all__ = ["convert", "verify_logits"]
