"""HF <-> PaddleNLP checkpoint conversion (name tables in arch.py, the streaming engine in engine.py)."""
from paddle_belle.convert.engine import convert

__all__ = ["convert"]  # convert --verify: convert/verify.py
