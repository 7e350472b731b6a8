"""The openai client as datagen and eval use it, against OpenAI or any compatible server (paddle-belle serve)."""
from __future__ import annotations

import os
import re

CHECK_TIMEOUT = 10.0  # seconds for the first request: an unreachable server should fail the run at once


class KeyRefused(RuntimeError):
    """The API refused the key (401/403). The command line names its own flag for the key in the message."""


def make_client(base_url: str | None = None, api_key: str | None = None, max_retries: int = 5,
                timeout: float = 600.0):
    """``openai.OpenAI`` with OPENAI_BASE_URL / OPENAI_API_KEY honoured. The SDK retries 408/409/429/5xx and
    dropped connections itself, with exponential backoff and the server's Retry-After. A local server without
    --api-key needs no key: a placeholder is sent when none is configured (OpenAI itself then answers 401)."""
    import openai

    return openai.OpenAI(base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None,
                         api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
                         max_retries=max_retries, timeout=timeout)


def check_endpoint(client, model: str) -> int | None:
    """One cheap request (GET /models, short timeout) before any work, so that a wrong URL, a server that is down,
    a refused key or an unknown model stop the run at once, in one line naming the URL, rather than after hours of
    answering or minutes of retries. Returns the model's context in tokens when the server reports it
    (``max_model_len``, as vLLM and paddle-belle serve do), else None."""
    import openai

    url = str(client.base_url).rstrip("/")
    try:
        page = client.with_options(timeout=CHECK_TIMEOUT, max_retries=1).models.list()
    except openai.APIConnectionError as e:  # also a timeout
        raise RuntimeError(f"cannot reach {url} ({e}); is the server running and the URL right?") from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        given = "no API key was given" if client.api_key == "none" else "it refused the API key"
        raise KeyRefused(f"{url}: {given} ({e.status_code})") from None
    except openai.APIStatusError as e:
        hint = "; the base URL of an OpenAI-compatible API usually ends in /v1" if e.status_code == 404 else ""
        raise RuntimeError(f"{url}/models answered {e.status_code}{hint}") from None
    served = {m.id: m for m in page.data}
    if served and model not in served:  # found now, not when the first request is refused
        names = ", ".join(sorted(served)[:10]) + (", ..." if len(served) > 10 else "")
        raise RuntimeError(f"{url} does not serve model {model!r} (it serves {names})")
    context = (served[model].model_extra or {}).get("max_model_len") if model in served else None
    return context if isinstance(context, int) and context > 0 else None


# The prompt's size in a "context length exceeded" 400: paddle-belle serve's wording, then OpenAI's and vLLM's
_PROMPT_TOKENS = re.compile(r"prompt \((\d+) tokens|(\d+) in the messages|has (\d+) input tokens")


def create_within(create, context: int | None, max_tokens: int, **request):
    """``create(max_tokens=max_tokens, **request)`` (a chat or completions ``create`` of the client). When the
    server answers 400 ``context_length_exceeded`` (prompt and max_tokens over its context), the request is sent
    once more with the max_tokens that fit: the context (from ``check_endpoint``) less the prompt's tokens, which
    the error names. The prompt is only counted there: the client has no tokenizer of the server's model."""
    import openai

    try:
        return create(max_tokens=max_tokens, **request)
    except openai.BadRequestError as e:
        m = _PROMPT_TOKENS.search(str(e)) if e.code == "context_length_exceeded" else None
        room = context - int(next(g for g in m.groups() if g)) if context and m else 0
        if room < 1:  # not that error, a context not reported, or the prompt alone fills it: the error says so
            raise
        return create(max_tokens=room, **request)
