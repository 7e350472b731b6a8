"""The server's model side (serve/engine.py) in process, on the bundled belle-tiny-zh."""
import asyncio

import pytest

from paddle_belle import AutoModelForCausalLM, AutoTokenizer
from paddle_belle.batching import Batcher, generate_all
from paddle_belle.serve.engine import Engine, Reply


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
