"""`lmkit serve`: the OpenAI completions and embeddings API over real HTTP, on a free loopback port.

The servers run in this process (uvicorn on a thread, lmkit.serving.app.BackgroundServer) or, for the
command itself, as `python -m lmkit serve`; every request goes through a real socket with the
standard library's HTTP client.
"""
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest
from conftest import NO_TORCH, run_cli

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from lmkit.serving.api import Service, open_service  # noqa: E402
from lmkit.serving.app import BackgroundServer, create_app  # noqa: E402
from lmkit.serving.engine import ContinuousBatcher  # noqa: E402

PROMPTS = ["the cat", "a dog sat on the", "quickly"]


# -- a small HTTP client ------------------------------------------------------------------------------


def http_call(url: str, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def post(url: str, body, path: str = "/v1/completions") -> tuple[int, dict]:
    return http_call(url, "POST", path, body)


def complete(url: str, **body) -> dict:
    status, answer = post(url, body)
    assert status == 200, answer
    return answer


def texts(answer: dict) -> list[str]:
    return [choice["text"] for choice in sorted(answer["choices"], key=lambda c: c["index"])]


def events(url: str, body: dict) -> list:
    """A streamed completion's server-sent events, parsed (the last one is the string [DONE])."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    out = []
    for block in response.read().decode().split("\n\n"):
        if block.strip():
            assert block.startswith("data: ")
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    connection.close()
    return out


def generated(directory: str, prompts: list[str], *flags) -> list[str]:
    """The continuations `lmkit generate --json` gives (its text field: the new text, without the prompt)."""
    result = run_cli("generate", directory, *[a for p in prompts for a in ("--prompt", p)], "--json", *flags)
    assert result.code == 0, result.err
    return [record["text"] for record in json.loads(result.out)]


@pytest.fixture(scope="module")
def export_server(tiny_gpt2_export):
    service = open_service(tiny_gpt2_export, name="tiny", max_batch=16)
    with BackgroundServer(create_app(service)) as url:
        yield url, service


@pytest.fixture(scope="module")
def torch_server(tiny_gpt2):
    service = open_service(tiny_gpt2, name="tiny-torch", device="cpu")
    with BackgroundServer(create_app(service)) as url:
        yield url, service


# -- the same text as lmkit generate ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["export", "model-dir"])
def test_greedy_sampled_and_stopped_text_equal_lmkit_generate(which, request, tiny_gpt2, tiny_gpt2_export):
    url, service = request.getfixturevalue("export_server" if which == "export" else "torch_server")
    directory = tiny_gpt2_export if which == "export" else tiny_gpt2
    assert texts(complete(url, prompt=PROMPTS, max_tokens=12, temperature=0)) == \
        generated(directory, PROMPTS, "--max-new-tokens", "12")
    # n choices per prompt are the prompt repeated n times, prompt by prompt, as lmkit generate seeds them
    sampled = complete(url, prompt=PROMPTS[:2], max_tokens=10, temperature=0.9, top_p=0.95, seed=11, n=2)
    assert texts(sampled) == generated(directory, [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, "--strategy", "sample",
                                       "--max-new-tokens", "10", "--temperature", "0.9", "--top-p", "0.95",
                                       "--seed", "11")
    assert texts(sampled)[0] != texts(sampled)[1]  # two samples, not one twice
    assert texts(complete(url, prompt=PROMPTS[0], max_tokens=10, temperature=0.9, seed=12)) != texts(sampled)[:1]
    greedy = complete(url, prompt=PROMPTS[0], max_tokens=12, temperature=0, logprobs=0)["choices"][0]["logprobs"]
    stop = next(text for text in greedy["tokens"][2:] if len(service.tokenizer.encode(text)) == 1
                and "\ufffd" not in text)  # a token further on: the choice ends before it
    stopped = complete(url, prompt=PROMPTS[0], max_tokens=12, temperature=0, stop=[stop])
    assert texts(stopped) == generated(directory, PROMPTS[:1], "--max-new-tokens", "12", "--stop", stop)
    assert stopped["choices"][0]["finish_reason"] == "stop"
    # A stop string that begins inside a token: matched on the text, as OpenAI's API matches it (a trial's
    # "\n\n" came as two "\n" tokens, and token matching never stopped it).
    k = next(k for k, token in enumerate(greedy["tokens"]) if token.strip().isalpha() and len(token.strip()) > 2)
    inside = greedy["tokens"][k].strip()[1:]
    assert service.tokenizer.encode(inside) != service.tokenizer.encode(greedy["tokens"][k])  # not its tokens
    stopped = complete(url, prompt=PROMPTS[0], max_tokens=12, temperature=0, stop=[inside])
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] == k  # it ends before the token the stop begins in
    # ... and its text at the stop, as OpenAI's API cuts it: the token's text before the stop stays
    whole = texts(complete(url, prompt=PROMPTS[0], max_tokens=12, temperature=0))[0]
    assert texts(stopped) == [whole[:whole.index(inside)]]
    assert texts(stopped) == generated(directory, PROMPTS[:1], "--max-new-tokens", "12", "--stop", inside)


def test_token_prompts_echo_and_usage(export_server, tiny_gpt2_export):
    url, service = export_server
    ids = service.tokenizer.encode(PROMPTS[1])
    by_ids = complete(url, prompt=ids, max_tokens=6, temperature=0)
    by_text = complete(url, prompt=PROMPTS[1], max_tokens=6, temperature=0, echo=True)
    assert texts(by_text) == [PROMPTS[1] + texts(by_ids)[0]]
    assert by_ids["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 6, "total_tokens": len(ids) + 6}
    assert by_ids["choices"][0]["finish_reason"] == "length" and by_ids["object"] == "text_completion"
    # An empty prompt is the bos token: echo writes it, so the offsets of the tokens after it point into the text.
    empty = complete(url, prompt="", max_tokens=3, temperature=0, echo=True, logprobs=1)["choices"][0]
    pieces = empty["logprobs"]["tokens"]
    assert empty["text"] == "".join(pieces) and empty["text"].startswith(pieces[0])
    assert empty["logprobs"]["text_offset"] == [sum(map(len, pieces[:k])) for k in range(len(pieces))]


# -- batching -----------------------------------------------------------------------------------------


def test_concurrent_requests_are_decoded_together_with_their_own_tokens(export_server):
    url, service = export_server
    bodies = [dict(prompt=f"{word} the cat", max_tokens=24, temperature=0 if i % 2 else 0.8, seed=i)
              for i, word in enumerate(["a", "the", "dog", "mat", "far", "home", "sat", "on"])]
    alone = [texts(complete(url, **body)) for body in bodies]  # one at a time

    before = http_call(url, "GET", "/health")[1]["engine"]
    together: list = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(i):
        barrier.wait()
        together[i] = complete(url, **bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = http_call(url, "GET", "/health")[1]["engine"]
    assert [texts(answer) for answer in together] == alone
    tokens = sum(answer["usage"]["completion_tokens"] for answer in together)
    calls = after["calls"] - before["calls"]
    assert after["tokens"] - before["tokens"] == tokens
    # one at a time, each token is a backend call of its own; together, the requests shared calls
    assert calls < tokens / 2, (calls, tokens)
    assert after["largest_batch"] >= 4
    assert (after["rows"] - before["rows"]) / calls > 2  # rows per call


def test_the_engine_lets_sequences_join_and_leave_between_steps(tiny_gpt2_export):
    """Unit level: a sequence queued while others run joins at the next step; a short one leaves early."""
    from lmkit.opening import open_model
    from lmkit.serving.engine import Sequence, Settings

    model = open_model(tiny_gpt2_export)
    batches = []

    class Recording:  # the export's backend, noting each call's batch size
        def __init__(self, backend):
            self.backend, self.max_length = backend, backend.max_length

        def prefill(self, input_ids, attention_mask, *args):
            batches.append(("prefill", len(input_ids)))
            if len(batches) == 1:
                engine.submit([late])  # arrives while the first batch runs
            return self.backend.prefill(input_ids, attention_mask, *args)

        def step(self, tokens, rows=None):
            batches.append(("step", len(tokens)))
            return self.backend.step(tokens, rows)

        def merge(self, input_ids, attention_mask):
            batches.append(("merge", len(input_ids)))
            return self.backend.merge(input_ids, attention_mask)

    engine = ContinuousBatcher(Recording(model.backend(64)), eos_id=None, pad_id=0)
    done = threading.Event()
    finished = []

    def on_event(sequence, kind, detail):
        if kind == "done":
            finished.append(sequence)
            if len(finished) == 3:
                done.set()

    ids = model.tokenizer.encode_batch(PROMPTS)
    short = Sequence(ids[0], Settings(max_new_tokens=3), on_event=on_event)
    long = Sequence(ids[1], Settings(max_new_tokens=8), on_event=on_event)
    late = Sequence(ids[2], Settings(max_new_tokens=4), on_event=on_event)
    engine.submit([short, long])
    engine.start()
    assert done.wait(30)
    engine.stop()
    # the late one joins the running two without a prefill of theirs: they step, it is merged in
    assert batches == [("prefill", 2), ("step", 2), ("merge", 1), ("step", 3), ("step", 2), ("step", 2), ("step", 1),
                       ("step", 1), ("step", 1)]
    alone = model.generate_ids(ids, model.decoding("greedy", max_new_tokens=8))
    assert long.tokens == alone[1].tokens and short.tokens == alone[0].tokens[:3]
    assert late.tokens == alone[2].tokens[:4]


# -- streaming, log-probabilities -------------------------------------------------------------------------


def test_streamed_chunks_add_up_to_the_completion(export_server):
    url, _ = export_server
    whole = complete(url, prompt=PROMPTS, max_tokens=16, temperature=0.7, seed=5, logprobs=2)
    chunks = events(url, dict(prompt=PROMPTS, max_tokens=16, temperature=0.7, seed=5, logprobs=2))
    assert chunks[-1] == "[DONE]"
    for choice in whole["choices"]:
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == choice["index"]]
        assert "".join(c["text"] for c in mine) == choice["text"]
        assert [c["finish_reason"] for c in mine][-1] == choice["finish_reason"]
        assert all(c["finish_reason"] is None for c in mine[:-1])
        streamed = [lp for c in mine if c["logprobs"] for lp in c["logprobs"]["token_logprobs"]]
        assert streamed == choice["logprobs"]["token_logprobs"]
        # Offsets into the whole text, as the response's (each chunk's started again at 0: a user's trial).
        offsets = [offset for c in mine if c["logprobs"] for offset in c["logprobs"]["text_offset"]]
        assert offsets == choice["logprobs"]["text_offset"]
    # With echo the prompt's tokens come first, streamed or not, and the offsets run on through the generated ones.
    whole = complete(url, prompt=PROMPTS[1], max_tokens=16, temperature=0, logprobs=1, echo=True)["choices"][0]
    chunks = [c["choices"][0] for c in events(url, dict(prompt=PROMPTS[1], max_tokens=16, temperature=0, logprobs=1,
                                                        echo=True))[:-1]]
    assert "".join(c["text"] for c in chunks) == whole["text"]
    for key in ("tokens", "token_logprobs", "text_offset"):
        assert [value for c in chunks if c["logprobs"] for value in c["logprobs"][key]] == whole["logprobs"][key]


def test_echoed_prompt_log_probabilities_are_the_models(torch_server, tiny_gpt2):
    """What lm-eval's local-completions scores with: echo, logprobs=1, max_tokens=1, token ids."""
    import torch

    url, service = torch_server
    ids = [service.tokenizer.encode(text) for text in ["the cat sat on the mat", "a dog ran"]]
    answer = complete(url, model="tiny-torch", prompt=ids, max_tokens=1, temperature=0, logprobs=1, echo=True)
    decoder = service.model.model.decoder
    for prompt, choice in zip(ids, answer["choices"]):
        with torch.no_grad():
            log_probs = torch.log_softmax(decoder(torch.tensor([prompt]))[0], dim=-1).numpy()  # (T, V)
        expected = [log_probs[t - 1, prompt[t]] for t in range(1, len(prompt))]
        got = choice["logprobs"]["token_logprobs"]
        assert got[0] is None and len(got) == len(prompt) + 1
        np.testing.assert_allclose(got[1:len(prompt)], expected, atol=1e-4)
        # the one generated token is the greedy one, and its log-probability is the top alternative's
        assert choice["logprobs"]["tokens"][:len(prompt)] == [service.tokenizer.decode([t]) for t in prompt]
        assert math.isclose(got[-1], max(choice["logprobs"]["top_logprobs"][-1].values()), abs_tol=1e-6)
        np.testing.assert_allclose(got[-1], log_probs[-1].max(), atol=1e-4)


# -- bad requests, disconnects ---------------------------------------------------------------------------


def test_bad_requests_get_4xx_json_errors_and_the_server_keeps_serving(export_server):
    url, service = export_server
    too_long = [1] * (service.model.max_positions + 1)
    cases = [
        (400, "not valid JSON", dict(raw=b'{"prompt": "the cat", ')),
        (400, "must be a JSON object", dict(body=["the cat"])),
        (400, "reads at most 64", dict(body={"prompt": too_long})),
        (400, "max_tokens must be between 1", dict(body={"prompt": "a", "max_tokens": 0})),
        (400, "max_tokens must be between 1", dict(body={"prompt": "a", "max_tokens": 10_000})),
        (400, "max_tokens must be an integer", dict(body={"prompt": "a", "max_tokens": "5"})),
        (404, "serves the model 'tiny', not 'gpt-4'", dict(body={"prompt": "a", "model": "gpt-4"})),
        (400, "prompt is required", dict(body={"max_tokens": 3})),
        (400, "outside the vocabulary", dict(body={"prompt": [1, 10**6]})),
        (400, "temperature must be 0", dict(body={"prompt": "a", "temperature": -1})),
        (400, "temperature must be a finite number", dict(raw=b'{"prompt": "a", "temperature": 1e400}')),
        (400, "top_p must be in", dict(body={"prompt": "a", "top_p": 0})),
        (400, "logprobs must be between 0 and 20", dict(body={"prompt": "a", "logprobs": 50})),
        (400, "stop must be", dict(body={"prompt": "a", "stop": [""]})),
        (400, "presence_penalty is not supported", dict(body={"prompt": "a", "presence_penalty": 1})),
    ]
    for status, message, how in cases:
        code, answer = http_call(url, "POST", "/v1/completions", how.get("body"), how.get("raw"))
        assert code == status and message in answer["error"]["message"], (how, answer)
        assert answer["error"]["type"] == "invalid_request_error"
    assert http_call(url, "GET", "/v1/nothing")[0] == 404
    assert http_call(url, "GET", "/v1/completions")[0] == 405
    assert post(url, {"input": "the cat"}, "/v1/embeddings")[0] == 400  # a decoder does not embed
    assert complete(url, prompt="the cat", max_tokens=3)["choices"][0]["finish_reason"] == "length"
    assert http_call(url, "GET", "/health") == (200, {"status": "ok", "model": "tiny",
                                                    "engine": service.engine.counters.to_dict()})
    assert http_call(url, "GET", "/v1/models")[1]["data"][0]["id"] == "tiny"


def test_a_client_leaving_mid_stream_disturbs_no_one(tiny_gpt2_export):
    from lmkit.opening import open_model

    model = open_model(tiny_gpt2_export)

    class Slow:  # 20 ms a call, so the stream is still going when its client leaves
        def __init__(self, backend):
            self.backend, self.max_length = backend, backend.max_length

        def prefill(self, *args):
            time.sleep(0.02)
            return self.backend.prefill(*args)

        def step(self, tokens, rows=None):
            time.sleep(0.02)
            return self.backend.step(tokens, rows)

        def merge(self, *args):
            time.sleep(0.02)
            return self.backend.merge(*args)

    engine = ContinuousBatcher(Slow(model.backend(64)), eos_id=None, pad_id=0)
    service = Service(model, "slow", engine, 64)
    expected = model.generate([PROMPTS[1]], "greedy", max_new_tokens=30)[0]
    with BackgroundServer(create_app(service)) as url:
        answers = []
        other = threading.Thread(target=lambda: answers.append(
            complete(url, prompt=PROMPTS[1], max_tokens=30, temperature=0)))
        parts = urllib.parse.urlsplit(url)
        leaving = socket.create_connection((parts.hostname, parts.port))
        body = json.dumps({"prompt": PROMPTS[0], "max_tokens": 60, "stream": True, "temperature": 0})
        leaving.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        other.start()
        received = b""
        while b"data: " not in received:  # the stream has started...
            received += leaving.recv(4096)
        leaving.close()  # ...and its client goes away
        other.join(30)
        assert texts(answers[0]) == [expected]
        time.sleep(0.3)
        counters = service.engine.counters.to_dict()
        assert counters["tokens"] < 30 + 60  # the stream's sequence left the batch before its 60 tokens
        assert texts(complete(url, prompt=PROMPTS[1], max_tokens=30, temperature=0)) == [expected]


# -- embeddings, the tokenizer endpoints ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    from lmkit.model import compose
    from lmkit.tokenizers import WordPiece, WordPieceOptions

    root = tmp_path_factory.mktemp("serve-bert")
    corpus = root / "corpus.txt"
    words = "the cat sat on a mat big dog ran far away quickly home tree".split()
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(200)))
    WordPiece.train([str(corpus)], WordPieceOptions(vocab_size=80), progress=False).save(str(root / "tok"))
    compose("bert-tiny", [f"tokenizer={root / 'tok'}", "encoder.n_layers=1", "encoder.d_model=32",
                          "encoder.d_ff=64"], str(root / "model"))
    return str(root / "model")


def test_an_encoder_serves_the_vectors_lmkit_embed_gives(tiny_bert):
    texts_in = ["the cat sat on the mat", "a dog"]
    result = run_cli("embed", tiny_bert, *[a for t in texts_in for a in ("--text", t)])
    assert result.code == 0, result.err
    expected = [record["embedding"] for record in json.loads(result.out)]
    with BackgroundServer(create_app(open_service(tiny_bert, device="cpu"))) as url:
        status, answer = post(url, {"model": "model", "input": texts_in}, "/v1/embeddings")
        assert status == 200, answer
        np.testing.assert_allclose([item["embedding"] for item in answer["data"]], expected, atol=1e-5)
        assert [item["index"] for item in answer["data"]] == [0, 1] and answer["usage"]["prompt_tokens"] > 0
        # /tokenize counts the tokens the encoder reads, [CLS] and [SEP] too (a trial's counts were 2 short)
        counts = [post(url, {"prompt": text}, "/tokenize")[1]["count"] for text in texts_in]
        assert sum(counts) == answer["usage"]["prompt_tokens"]
        status, packed = post(url, {"input": texts_in[1], "encoding_format": "base64"}, "/v1/embeddings")
        import base64

        np.testing.assert_allclose(np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), np.float32),
                                   expected[1], atol=1e-5)
        status, answer = post(url, {"prompt": "the cat"})
        assert status == 400 and "does not generate" in answer["error"]["message"]
        assert post(url, {"input": ["the cat " * 200]}, "/v1/embeddings")[0] == 400
        status, answer = post(url, {"input": "the cat", "dimensions": 8}, "/v1/embeddings")  # was ignored: a trial
        assert status == 400 and "dimensions is not supported" in answer["error"]["message"]
        status, answer = post(url, {"input": [5, 6, 7]}, "/v1/embeddings")
        assert status == 400 and "input must be text: a string or a non-empty list of strings" in answer["error"]["message"]


# -- encoder-decoders: the prompt is the source, the text its target ---------------------------------------


@pytest.mark.parametrize("which", ["model-dir", "export"])
def test_an_encoder_decoder_serves_the_targets_lmkit_generate_gives(t5_directories, which):
    from test_t5_hf import SOURCES

    directory = t5_directories[which == "export"]
    service = open_service(directory, name="t5", max_batch=8, device="cpu")
    with BackgroundServer(create_app(service)) as url:
        greedy = texts(complete(url, prompt=SOURCES, max_tokens=10, temperature=0))
        assert greedy == generated(directory, SOURCES, "--max-new-tokens", "10")
        # Hot sampling writes T5's lone word-start piece first or last, whose space lmkit generate strips, and so
        # does the server now (a user's trial found " dog Pea mouse Pisch" against "dog Pea mouse Pisch").
        for temperature, seed in ((0.9, 5), (4.0, 11)):
            sampled = complete(url, prompt=SOURCES[:2], max_tokens=8, temperature=temperature, seed=seed, n=2)
            assert texts(sampled) == generated(
                directory, [SOURCES[0]] * 2 + [SOURCES[1]] * 2, "--strategy", "sample", "--max-new-tokens", "8",
                "--temperature", str(temperature), "--seed", str(seed))
        # Token ids are a source as the text's are: the encoder's </s> ends them, given or not (a trial found the
        # ids /tokenize returns answered otherwise than their text).
        ids = service.tokenizer.encode(SOURCES[0])
        for prompt in (ids, ids + [service.tokenizer.eos_id]):
            assert texts(complete(url, prompt=prompt, max_tokens=10, temperature=0)) == greedy[:1]
        one = complete(url, prompt=SOURCES[0], max_tokens=10, temperature=0)
        assert post(url, {"prompt": SOURCES[0]}, "/tokenize")[1]["count"] == one["usage"]["prompt_tokens"]
        streamed = events(url, {"prompt": SOURCES[1], "max_tokens": 10, "temperature": 0})
        assert "".join(chunk["choices"][0]["text"] for chunk in streamed[:-1]) == greedy[1]
        with_logprobs = complete(url, prompt=SOURCES[1], max_tokens=10, temperature=0, logprobs=2)["choices"][0]
        assert with_logprobs["text"] == greedy[1] and len(with_logprobs["logprobs"]["top_logprobs"][0]) == 2
        # Requests at once: each gets its own source's target, whether it joined a batch or waited for one to end.
        answers: dict[int, str] = {}

        def ask(i: int) -> None:
            answers[i] = texts(complete(url, prompt=SOURCES[i % 3], max_tokens=10, temperature=0))[0]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(7)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == {i: greedy[i % 3] for i in range(7)}
        for body, message in [({"prompt": SOURCES[0], "echo": True, "logprobs": 1}, "echo with logprobs"),
                              ({"prompt": ""}, "the prompt is empty; give a source to read"),
                              ({"prompt": [[99999]]}, "outside the source vocabulary")]:
            status, answer = post(url, body)
            assert status == 400 and message in answer["error"]["message"], answer
        assert texts(complete(url, prompt=SOURCES[2], max_tokens=10, temperature=0)) == greedy[2:]  # still serving


def test_tokenizer_endpoints_speak_vllms_protocol(export_server):
    url, service = export_server
    status, info = http_call(url, "GET", "/tokenizer_info")
    assert status == 200 and info["eos_token"] == service.tokenizer.special_tokens.get("eos")
    status, tokens = post(url, {"prompt": PROMPTS[1], "add_special_tokens": False}, "/tokenize")
    assert tokens["tokens"] == service.tokenizer.encode(PROMPTS[1]) and tokens["max_model_len"] == 64
    usage = complete(url, prompt=PROMPTS[1], max_tokens=2, temperature=0)["usage"]
    assert post(url, {"prompt": PROMPTS[1]}, "/tokenize")[1]["count"] == usage["prompt_tokens"]
    empty = complete(url, prompt="", max_tokens=2, temperature=0)["usage"]  # the bos token, both ways
    assert post(url, {"prompt": ""}, "/tokenize")[1]["count"] == empty["prompt_tokens"] == 1
    # JSON's \\ud800 is half a surrogate pair, no character: a 400 that says so, not a tokenizer's 500
    for body, path in (({"prompt": "a", "stop": ["ok", "\ud800"]}, "/v1/completions"),
                       ({"prompt": "x\ud800"}, "/tokenize")):
        status, answer = post(url, body, path)
        assert status == 400 and "half of a UTF-16 surrogate pair" in answer["error"]["message"], answer
    assert "stop[1] holds" in post(url, {"prompt": "a", "stop": ["ok", "\ud800"]})[1]["error"]["message"]
    assert post(url, {"tokens": tokens["tokens"]}, "/detokenize")[1] == {"prompt": PROMPTS[1]}
    assert post(url, {"tokens": [-1]}, "/detokenize")[0] == 400


# -- the command -----------------------------------------------------------------------------------------


def test_lmkit_serve_runs_an_export_without_torch(tiny_gpt2_export):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LMKIT_")}
    code = NO_TORCH + "from lmkit.cli import main\nmain()\n"
    server = subprocess.Popen([sys.executable, "-c", code, "serve", tiny_gpt2_export, "--port", "0", "--name", "m"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        line = server.stdout.readline()
        assert line.startswith("serving m (decoder, onnxruntime) at http://127.0.0.1:"), (line, server.stderr.read())
        url = line.split(" at ")[1].split("/v1")[0]
        assert texts(complete(url, prompt=PROMPTS[0], max_tokens=8, model="m")) == \
            generated(tiny_gpt2_export, PROMPTS[:1], "--max-new-tokens", "8")
        # Streaming clients that leave after the first event: the server stops writing to them. It wrote on, and
        # asyncio logged "socket.send() raised exception." some 100 times for three such clients (a user's trial).
        parts = urllib.parse.urlsplit(url)
        body = json.dumps({"prompt": PROMPTS[0], "max_tokens": 60, "stream": True, "n": 4, "temperature": 0.9})
        for _ in range(3):
            leaving = socket.create_connection((parts.hostname, parts.port))
            leaving.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
            received = b""
            while b"data: " not in received:
                received += leaving.recv(64)
            leaving.close()
        assert texts(complete(url, prompt=PROMPTS[0], max_tokens=8, model="m")) == \
            generated(tiny_gpt2_export, PROMPTS[:1], "--max-new-tokens", "8")
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert "socket.send() raised exception" not in errors, errors


def test_lmkit_serve_refuses_what_it_cannot_serve_in_one_line(run, tmp_path, tiny_gpt2_export):
    result = run("serve", tmp_path / "missing")
    assert result.code != 0 and "is not a directory" in result.err and "Traceback" not in result.err
    result = run("serve", tiny_gpt2_export, "--provider", "CPUExecutionProvider", "--device", "cpu")
    assert result.code == 2 and "not both" in result.err
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    result = run("serve", tiny_gpt2_export, "--port", taken.getsockname()[1])
    taken.close()
    assert result.code == 1 and "cannot listen on 127.0.0.1" in result.err
    result = run("serve", tiny_gpt2_export, "--host", "nosuchhost.invalid", "--port", 0)  # the host is what to change
    assert result.code == 1 and "give --host an address of this machine" in result.err and "Traceback" not in result.err


# -- lm-evaluation-harness's local-completions model, over HTTP --------------------------------------------


def lm_eval_python() -> str | None:
    """A Python with lm-eval: LMKIT_LM_EVAL_PYTHON (lm-eval pins its own dependencies, so it may live in an
    environment of its own), else this one if it has it."""
    given = os.environ.get("LMKIT_LM_EVAL_PYTHON")
    if given:
        return given
    import importlib.util

    return sys.executable if importlib.util.find_spec("lm_eval") else None


MC_TASK = """task: lmkit_serve_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""

PPL_TASK = """task: lmkit_serve_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
"""


def check_lm_eval_scores(python: str, model: str, model_args: str, tokenizer, decoder, tmp_path,
                         **environment) -> None:
    """Run lm-eval's `model` on small multiple-choice and rolling-perplexity tasks and check every
    log-likelihood, the accuracy and the word perplexity against the PyTorch decoder's own (1e-4).
    environment: variables for lm-eval's process beside the offline switches."""
    import torch

    rng = np.random.default_rng(0)
    words = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "far", "home"]
    questions = [{"context": " ".join(rng.choice(words, 5)), "choices": [" ".join(rng.choice(words, 2)) for _ in
                                                                            range(3)], "label": int(rng.integers(3))}
                 for _ in range(12)]
    documents = [{"text": " ".join(rng.choice(words, int(rng.integers(4, 12))))} for _ in range(6)]
    for name, rows, task in (("mc", questions, MC_TASK), ("ppl", documents, PPL_TASK)):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        (tmp_path / f"{name}.yaml").write_text(task.format(data=data))
    environment = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   **environment}
    done = subprocess.run(
        [python, "-m", "lm_eval", "--model", model, "--model_args", model_args,
         "--tasks", "lmkit_serve_mc,lmkit_serve_ppl", "--include_path", str(tmp_path),
         "--output_path", str(tmp_path / "out"), "--log_samples"],
        capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]

    def log_likelihood(context: list[int], continuation: list[int]) -> float:
        ids = context + continuation
        with torch.no_grad():
            log_probs = torch.log_softmax(decoder(torch.tensor([ids]))[0], dim=-1)
        return float(sum(log_probs[t - 1, ids[t]] for t in range(len(context), len(ids))))

    samples = {}
    for path in (tmp_path / "out").rglob("samples_*.jsonl"):
        task = "mc" if "lmkit_serve_mc" in path.name else "ppl"
        samples[task] = sorted((json.loads(line) for line in path.read_text().splitlines()),
                               key=lambda s: s["doc_id"])
    correct = 0
    for sample, question in zip(samples["mc"], questions, strict=True):
        expected = []
        for choice in question["choices"]:  # lm-eval's pair encoding: the whole, then the context's length
            context = tokenizer.encode(question["context"])
            whole = tokenizer.encode(question["context"] + " " + choice)
            expected.append(log_likelihood(context, whole[len(context):]))
        got = [float(response[0]) for response in sample["filtered_resps"]]  # lm-eval logs them as strings
        np.testing.assert_allclose(got, expected, atol=1e-4)
        correct += int(np.argmax(expected) == question["label"])
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    assert results["lmkit_serve_mc"]["acc,none"] == pytest.approx(correct / len(questions))
    # what lm-eval starts a rolling window with (genai_config's bos_token_id for an export)
    prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    total, n_words = 0.0, 0
    for sample, document in zip(samples["ppl"], documents, strict=True):  # each fits one window of the context
        expected = log_likelihood([prefix], tokenizer.encode(document["text"]))
        assert float(sample["filtered_resps"][0]) == pytest.approx(expected, abs=1e-4)
        total, n_words = total + expected, n_words + len(document["text"].split())
    assert results["lmkit_serve_ppl"]["word_perplexity,none"] == pytest.approx(math.exp(-total / n_words), rel=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LMKIT_SLOW_TESTS") != "1", reason="runs lm-eval for minutes; set LMKIT_SLOW_TESTS=1")
def test_lm_eval_local_completions_scores_what_the_model_gives(torch_server, tmp_path):
    """lm-eval's local-completions model, with lmkit serve's tokenizer endpoints as its (remote) tokenizer:
    its log-likelihoods, accuracy and word perplexity are the model's own, computed here with PyTorch."""
    python = lm_eval_python()
    if python is None:
        pytest.skip("lm-eval is not installed (pip install lm-eval, or point LMKIT_LM_EVAL_PYTHON at a Python "
                    "that has it)")
    url, service = torch_server
    tokenizer, decoder = service.tokenizer, service.model.model.decoder
    check_lm_eval_scores(python, "local-completions",
                         f"model=tiny-torch,base_url={url}/v1/completions,tokenizer_backend=remote,"
                         "tokenized_requests=True,max_length=64,num_concurrent=4", tokenizer, decoder, tmp_path)


def test_a_low_max_tokens_limit_still_scores_long_prompts_on_pytorch(tiny_gpt2):
    """A prompt fed token by token (echo with logprobs) runs past max_tokens positions after its prefill."""
    service = open_service(tiny_gpt2, max_tokens_limit=2, device="cpu")
    with BackgroundServer(create_app(service)) as url:
        prompt = service.tokenizer.encode("the cat sat on the mat and the dog ran far away home")
        answer = complete(url, prompt=prompt, max_tokens=2, temperature=0, logprobs=1, echo=True)
        assert len(answer["choices"][0]["logprobs"]["token_logprobs"]) == len(prompt) + 2
        plain = complete(url, prompt=prompt, max_tokens=2, temperature=0)
        assert answer["choices"][0]["text"].endswith(plain["choices"][0]["text"])
        assert post(url, {"prompt": prompt, "max_tokens": 3})[0] == 400
