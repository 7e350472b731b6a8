"""`paddle-belle serve` on a tiny BELLE checkpoint, driven by the real openai client over HTTP."""
import subprocess
import sys
import threading
import time

import openai
import pytest
import requests
from reference import tiny_belle_dir
from servers import BelleServer

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def belle_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("belle-serve")
    tiny_belle_dir(d)
    return d


@pytest.fixture(scope="module")
def server(belle_dir):
    s = BelleServer(belle_dir, "--api-key", KEY, "--max-concurrency", "4", "--max-queue", "32", "--prefill-chunk", "40",
                    "--max-tokens", "256", "--max-request-bytes", "20000", "--served-model-name", "belle-tiny")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def chat(client, text, **kw):
    return client.chat.completions.create(model="belle-tiny", messages=[{"role": "user", "content": text}], **kw)


def streamed(stream):
    """(text, finish_reason, usage) of a streamed chat or completion."""
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "" if hasattr(choice, "delta") else choice.text)
            finish = choice.finish_reason or finish
    return "".join(parts), finish, usage


def test_models_chat_and_completions_sync_and_streaming(client):
    assert [m.id for m in client.models.list()] == ["belle-tiny"]
    r = chat(client, "你好", max_tokens=24, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and text
    assert r.usage.completion_tokens <= 24 and r.usage.prompt_tokens > 0
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 24
    s_text, s_finish, s_usage = streamed(chat(client, "你好", max_tokens=24, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert (s_text.rstrip(), s_finish) == (text, r.choices[0].finish_reason)
    assert s_usage.completion_tokens == r.usage.completion_tokens

    prompt = "Human: 请介绍一下你自己\n\nAssistant:"
    c = client.completions.create(model="belle-tiny", prompt=prompt, max_tokens=16, temperature=0)
    assert c.choices[0].finish_reason in ("stop", "length") and c.usage.completion_tokens <= 16
    s_text, s_finish, _ = streamed(client.completions.create(model="belle-tiny", prompt=prompt, max_tokens=16,
                                                             temperature=0, stream=True))
    assert (s_text, s_finish) == (c.choices[0].text, c.choices[0].finish_reason)

    # seeded sampling with BELLE's extra settings is reproducible; another seed (almost surely) differs
    kw = dict(max_tokens=24, temperature=0.9, top_p=0.9, seed=7, extra_body={"top_k": 30, "repetition_penalty": 1.2})
    assert chat(client, "讲个故事", **kw).choices[0].message.content == chat(client, "讲个故事", **kw).choices[0].message.content


def test_stop_is_honoured(client):
    full = chat(client, "写一首诗", max_tokens=40, temperature=0).choices[0].message.content
    k = next(i for i in range(3, len(full) - 2) if not any(c.isspace() or c == "\ufffd" for c in full[i:i + 2]))
    stop = full[k:k + 2]
    expected = full[: full.index(stop)].rstrip()
    r = chat(client, "写一首诗", max_tokens=40, temperature=0, stop=[stop])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (expected, "stop")
    text, finish, _ = streamed(chat(client, "写一首诗", max_tokens=40, temperature=0, stop=stop, stream=True))
    assert (text.rstrip(), finish) == (expected, "stop")
    assert stop not in text


def test_auth_and_limits(server, client):
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=server.url + "/v1", api_key=key or "x", max_retries=0).models.list()
        assert e.value.status_code == 401 and "invalid API key" in str(e.value)
    r = requests.post(server.url + "/v1/chat/completions", json={"model": "belle-tiny", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"  # checked before anything else
    assert server.health()["status"] == "ok"  # /health needs no key

    with pytest.raises(openai.APIStatusError) as e:  # 20000-byte limit
        chat(client, "长" * 10000, max_tokens=8)
    assert e.value.status_code == 413 and e.value.body["code"] == "request_too_large"
    with pytest.raises(openai.BadRequestError, match="max_tokens must be between 1 and 256"):
        chat(client, "你好", max_tokens=257)
    # the context (BELLE's 2048 for BLOOM) is in /v1/models and /health; a prompt over it gets OpenAI's code, and a
    # message naming the prompt's tokens, for both APIs
    assert client.models.list().data[0].model_extra["max_model_len"] == server.health()["context"] == 2048
    with pytest.raises(openai.BadRequestError, match=r"the prompt \(\d+ tokens, the last message alone\)") as e:
        chat(client, "长" * 3000, max_tokens=8)
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"
    with pytest.raises(openai.BadRequestError, match=r"the prompt \(\d+ tokens, the last message alone\)"):
        chat(client, "长" * 3000, max_tokens=8, stream=True)  # streamed too: a 400, not an error inside a 200 stream
    with pytest.raises(openai.BadRequestError, match=r"the prompt \(\d+ tokens\) and max_tokens \(8\) exceed") as e:
        client.completions.create(model="belle-tiny", prompt="长" * 3000, max_tokens=8)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4' is not served here"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="last message must come from the user"):
        client.chat.completions.create(model="belle-tiny", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        chat(client, "你好", n=2)
    with pytest.raises(openai.BadRequestError, match="prompt_style: Input should be 'belle', 'belle-v2'"):
        chat(client, "你好", extra_body={"prompt_style": "alpaca"})
    bad = requests.post(server.url + "/v1/completions", data=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}


def test_sixteen_streaming_clients_share_four_rows(server, client):
    """Different prompt lengths, max_tokens, stop strings and sampling in one batch (4 rows, a prefill budget of 40
    positions a step: prompts of 16 and 18 tokens arriving together are the rows of one prefill, a third then gets a
    chunk alone, the longest, 34 tokens, is chunked when it arrives beside others): each reply is exactly what it is
    alone."""
    prompts = ["你好", "写一首诗", "1+1=?", "翻译：hello，请把这句话翻译成中文，并解释一下它的意思。"]
    kinds = [dict(max_tokens=32, temperature=0), dict(max_tokens=20, temperature=0),
             dict(max_tokens=28, temperature=0, extra_body={"repetition_penalty": 1.3}),
             dict(max_tokens=24, temperature=0.9, top_p=0.9, seed=11, extra_body={"top_k": 30})]
    requests_ = [(prompts[i % 4], kinds[i // 4]) for i in range(16)]
    expected = {i: chat(client, p, **kw) for i, (p, kw) in enumerate(requests_[:4])}  # one at a time: alone
    for i in range(4, 8):  # a stop string from early in each greedy reply
        text = expected[i - 4].choices[0].message.content
        k = next(k for k in range(len(text) // 4, len(text) - 2) if not any(c.isspace() for c in text[k : k + 2]))
        requests_[i] = (prompts[i % 4], {**kinds[1], "stop": [text[k : k + 2], "never"]})
    expected.update({i: chat(client, p, **kw) for i, (p, kw) in enumerate(requests_) if i >= 4})
    before = server.health()
    results, errors = {}, []
    barrier = threading.Barrier(16)

    def one(i):
        try:
            barrier.wait()
            p, kw = requests_[i]
            results[i] = streamed(chat(client, p, stream=True, stream_options={"include_usage": True}, **kw))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 16, server.output()
    for i, (text, finish, usage) in results.items():
        e = expected[i]
        assert (text.rstrip(), finish, usage.completion_tokens) == \
            (e.choices[0].message.content, e.choices[0].finish_reason, e.usage.completion_tokens), requests_[i]
    assert [expected[i].choices[0].finish_reason for i in range(4, 8)].count("stop") >= 3
    after = server.health()
    assert after["completed"] - before["completed"] == 16 and after["rejected"] == before["rejected"]
    assert after["peak_active"] == 4 and after["peak_queued"] >= 1 and after["active"] == after["queued"] == 0
    assert after["batch_rows_busy"] == 0 and after["mean_batch"] > 1  # replies were decoded together
    assert after["step_seconds"] > before["step_seconds"] > 0
    parts = sum(after[f"{part}_seconds"] - before[f"{part}_seconds"] for part in ("decode", "tokens", "prefill"))
    assert 0 < parts <= after["step_seconds"] - before["step_seconds"] and after["job_seconds"] > 0
    assert after["decode_rows"] - before["decode_rows"] > after["decode_steps"] - before["decode_steps"]


LONG_STREAM = """
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="none", max_retries=0)
s = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "你好"}], stream=True,
                              max_tokens=2000, temperature=0, extra_body={"min_tokens": 2000})
for chunk in s:
    if chunk.choices and chunk.choices[0].delta.content:
        print("got", flush=True)
        break
sys.stdin.read()  # hold the connection open until killed
"""


def test_queue_overflow_429_and_killed_client_frees_its_row(belle_dir, tmp_path):
    server = BelleServer(belle_dir, "--max-concurrency", "2", "--max-queue", "1", "--served-model-name", "tiny")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
        kw = dict(model="tiny", messages=[{"role": "user", "content": "写一首诗"}], max_tokens=300, temperature=0,
                  extra_body={"min_tokens": 300})
        alone = client.chat.completions.create(**kw).choices[0].message.content
        # a client killed mid-stream: its row must come back at once, and the reply sharing the batch with it
        # must end exactly as it does alone
        script = tmp_path / "long_stream.py"
        script.write_text(LONG_STREAM)
        proc = subprocess.Popen([sys.executable, str(script), server.url + "/v1"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "got"
        started, other = threading.Event(), {}

        def stream_other():
            parts = []
            for chunk in client.chat.completions.create(**kw, stream=True):
                started.set()
                parts.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
            other["text"] = "".join(parts)

        t = threading.Thread(target=stream_other)
        t.start()
        started.wait(60)
        assert server.health()["active"] == 2
        proc.kill()
        proc.wait()
        t.join()
        assert other["text"].rstrip() == alone
        deadline = time.monotonic() + 60
        while server.health()["active"] and time.monotonic() < deadline:
            time.sleep(0.1)
        h = server.health()
        assert (h["active"], h["batch_rows_busy"], h["disconnected"], h["completed"]) == (0, 0, 1, 2)
        assert chat_ok(client)

        # 2 running + 1 queued: with 6 long requests arriving together, the rest are refused with 429
        outcomes, barrier = [], threading.Barrier(6)

        def one():
            barrier.wait()
            try:
                client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "你好"}],
                                               max_tokens=300, temperature=0, extra_body={"min_tokens": 300})
                outcomes.append("ok")
            except openai.RateLimitError as e:
                outcomes.append(e.status_code)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("ok") >= 1 and outcomes.count(429) >= 1 and len(outcomes) == 6
        assert server.health()["rejected"] == outcomes.count(429)
        assert chat_ok(client)  # and the server is fine afterwards
    finally:
        server.stop()


def chat_ok(client) -> bool:
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "再见"}], max_tokens=4)
    return r.choices[0].finish_reason in ("stop", "length")


def test_messages_become_belle_prompts(belle_dir):
    from paddle_belle import AutoModelForCausalLM, AutoTokenizer
    from paddle_belle.serve import Engine

    model, tok = AutoModelForCausalLM.from_pretrained(belle_dir), AutoTokenizer.from_pretrained(belle_dir)
    engine = Engine(model, tok, style="belle")
    messages = [{"role": "system", "content": "你是BELLE"}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "再见"}]
    assert engine.chat_prompt(messages, 16) == "Human: 你是BELLE\n你好\n\nAssistant: 你好！\n\nHuman: 再见\n\nAssistant:"
    opened = [{"role": "assistant", "content": "欢迎"}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert engine.chat_prompt(opened, 16) == "Human: \n\nAssistant: 欢迎\n\nHuman: a\nb\n\nAssistant:"
    v2 = Engine(model, tok, style="belle-v2")
    assert v2.chat_prompt(messages[1:], 16) == "Human: \n你好\n\nAssistant: \n你好！</s>Human: \n再见\n\nAssistant: \n"
    assert engine.chat_prompt(messages[1:], 16, "belle-v2") == v2.chat_prompt(messages[1:], 16)  # a request's style
    # a short context keeps the newest turns that fit, and the system text
    newest = "Human: 你是BELLE\n再见\n\nAssistant:"
    small = Engine(model, tok, context=engine.count_tokens(newest) + 16)
    assert small.chat_prompt(messages, 16) == newest
    with pytest.raises(ValueError, match=r"the prompt \(\d+ tokens, the last message alone\) and max_tokens \(17\)"):
        small.chat_prompt(messages, 17)


def test_readme_client_snippet_runs(server, capsys):
    """The README's openai-client example, pointed at the test server."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Serving", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = (code.replace("http://127.0.0.1:8000/v1", server.url + "/v1").replace("sk-local", KEY)
            .replace('"belle-7b-2m"', '"belle-tiny"').replace("max_tokens=200", "max_tokens=12"))
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out


def test_slots_queue_then_refuse():
    import asyncio

    from paddle_belle.serve.engine import QueueFull, Slots

    async def scenario():
        slots, order = Slots(max_active=1, max_queue=1), []
        release_a = asyncio.Event()

        async def a():
            async with slots.acquire():
                order.append("a runs")
                await release_a.wait()

        async def b():
            async with slots.acquire():
                order.append("b runs")

        task_a = asyncio.create_task(a())
        await asyncio.sleep(0)
        task_b = asyncio.create_task(b())
        await asyncio.sleep(0)
        assert (slots.stats.active, slots.stats.queued) == (1, 1) and order == ["a runs"]
        with pytest.raises(QueueFull, match="1 requests running and 1 queued"):
            async with slots.acquire():
                pass
        release_a.set()
        await asyncio.gather(task_a, task_b)
        assert order == ["a runs", "b runs"]
        s = slots.stats
        assert (s.active, s.queued, s.peak_active, s.peak_queued, s.rejected) == (0, 0, 1, 1, 1)

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="--max-concurrency must be >= 1"):
        Slots(0, 4)


def test_a_bad_or_busy_port_is_refused_before_the_model_loads(capsys):
    """Port 99999 was a 79-line OverflowError traceback; a port in use failed only after the model had loaded and
    "serving on ..." had been printed. The model here does not exist: the port must be the first complaint."""
    import socket

    from paddle_belle import cli
    from paddle_belle.serve import serve

    with pytest.raises(SystemExit) as stop:
        cli.main(["serve", "--model", "no-such-model", "--port", "99999"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("paddle-belle serve: error: argument --port: must be between "
                                                        "1 and 65535, not 99999")
    with pytest.raises(ValueError, match="^port must be between 1 and 65535, not 99999$"):
        serve("no-such-model", port=99999)  # the library checks it too
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert cli.main(["serve", "--model", "no-such-model", "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"paddle-belle serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "serving" not in captured.out and "on http" not in captured.out
