"""The server's model side (serve/engine.py) in process, on the bundled belle-tiny-zh."""
import asyncio

import pytest
from servers import BelleServer

from paddle_belle import AutoModelForCausalLM, AutoTokenizer
from paddle_belle.batching import Batcher, generate_all
from paddle_belle.serve.engine import Engine, Reply, default_rows


def test_a_request_is_tokenized_and_joins_the_batch_in_one_model_thread_job():
    model, tok = AutoModelForCausalLM.from_pretrained("belle-tiny-zh"), AutoTokenizer.from_pretrained("belle-tiny-zh")
    engine = Engine(model, tok, rows=2, context=256)
    jobs = []

    class Counted:  # the model thread's job queue, counting every job handed to it
        def __init__(self, q):
            self.q, self.get, self.get_nowait, self.empty = q, q.get, q.get_nowait, q.empty

        def put(self, job):
            jobs.append(job)
            self.q.put(job)

    engine._jobs = Counted(engine._jobs)
    config = engine.config(max_tokens=12, min_tokens=12, temperature=0, chat=False)

    async def reply_to(prepare):
        reply = Reply()
        return "".join([t async for t in engine.generate(prepare, config, reply, strip=False)]), reply

    text, reply = asyncio.run(reply_to(lambda: engine.encode("Human: 你好\n\nAssistant:", 12)))
    # one job (tokenize + join): each job waits for the step in progress to end, its row idle meanwhile
    assert len(jobs) == 1 and (reply.completion_tokens, reply.finish_reason) == (12, "length")
    ids = tok("Human: 你好\n\nAssistant:")["input_ids"]
    (_, alone), = generate_all(Batcher(model, tok, rows=1), [ids], config)
    assert (reply.prompt_tokens, text) == (len(ids), alone.text.text)
    with pytest.raises(ValueError, match="the prompt is empty"):  # raised at the first step, before any reply text
        asyncio.run(reply_to(lambda: engine.encode("", 12)))
    assert not engine.batcher.busy


def test_the_default_rows_fit_the_cache_into_half_the_available_memory():
    model, tok = AutoModelForCausalLM.from_pretrained("belle-tiny-zh"), AutoTokenizer.from_pretrained("belle-tiny-zh")
    row = 2048 * 4 * 2 * 256 * 4  # tokens x layers x (keys, values) x hidden x float32: 16 MiB
    mib = 1 << 20
    assert [default_rows(model, 2048, available)[0] for available in (mib, 100 * mib, 1000 * mib)] == [1, 3, 16]
    cache = Batcher(model, tok, rows=3, max_length=2048, columns=2048).cache  # what the server then allocates
    assert sum(t.numel().item() * t.element_size() for t in cache.keys + cache.values) == 3 * row <= 50 * mib


def test_the_server_prints_the_rows_it_chose():
    server = BelleServer("belle-tiny-zh", "--served-model-name", "tiny")
    try:
        assert server.health()["max_concurrency"] == 16  # 16 MiB a row: any machine has half of 512 MiB free
        assert "16 rows in the batch (default: the KV cache, 16 MiB a row of 2048 tokens, within 50% of" in \
            server.output()
    finally:
        server.stop()
