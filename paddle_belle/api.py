"""The openai client as datagen and eval use it, against OpenAI or any compatible server (paddle-belle serve)."""
from __future__ import annotations

import os


def make_client(base_url: str | None = None, api_key: str | None = None, max_retries: int = 5,
                timeout: float = 600.0):
    """``openai.OpenAI`` with OPENAI_BASE_URL / OPENAI_API_KEY honoured. The SDK retries 408/409/429/5xx and
    dropped connections itself, with exponential backoff and the server's Retry-After. A local server without
    --api-key needs no key: a placeholder is sent when none is configured (OpenAI itself then answers 401)."""
    import openai

    return openai.OpenAI(base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None,
                         api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
                         max_retries=max_retries, timeout=timeout)
