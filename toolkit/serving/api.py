"""The OpenAI completions and embeddings API over an opened lmkit model, without the server library.

Service reads a request body (a dict) into engine Sequences, or fails with RequestError (an HTTP
status and a one-line message, returned as OpenAI's {"error": {...}}), and writes the responses.
Field meanings follow OpenAI's legacy completions API (platform.openai.com/docs/api-reference/completions),
which lm-evaluation-harness's `local-completions` model and OpenAI's client speak:

    prompt        a string, a list of strings, a list of token ids or a list of lists of token ids
    max_tokens    new tokens per choice, at least 1 (default 16); fewer where the context ends
    temperature   0: greedy search; above 0: sampling (default: the model's own decoding settings)
    top_p, top_k  nucleus and top-k truncation of sampling (top_k is an extension, as in vLLM)
    stop          a string or a list of strings that end a choice, left out of its text
    seed          the seed of sampling: the same seed gives the tokens `lmkit generate --seed` gives
    n             choices per prompt; choice i * n + j is prompt i's j-th
    stream        server-sent events, one chunk per piece of text, then `data: [DONE]`
    logprobs      k: each token's log-probability and the k most likely (at most 20)
    echo          the prompt's text before each choice's (with logprobs: the prompt tokens' too)
    ignore_eos    go on past the end-of-text token (an extension, as in vLLM: benchmarks)
"""
from __future__ import annotations

import base64
import math
import time
import uuid
from dataclasses import dataclass

import numpy as np

from ..decoding.sampling import row_generators
from ..errors import LmkitError
from ..seq2seq import target_text
from .engine import ContinuousBatcher, Sequence, Settings, SourcePrompts

MAX_LOGPROBS = 20
MAX_CHOICES = 64
MAX_STOPS = 16
UNBOUNDED_PROMPT_LIMIT = 8192  # the longest prompt of a model without a context length (recurrent decoders)
DEFAULT_TARGET_LIMIT = 1024  # the most max_tokens an encoder-decoder's request may ask, unless the server says


class RequestError(LmkitError):
    """A request the server refuses: `status` (4xx) and a one-line message, with the field it is about."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code

    def body(self) -> dict:
        return error_body(str(self), "invalid_request_error", self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# -- reading fields ----------------------------------------------------------------------------------


def _integer(body: dict, name: str, default, low: int, high: int | None = None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r}", param=name)
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise RequestError(f"{name} must be {bounds}, got {value}", param=name)
    return value


def _number(body: dict, name: str, default):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}", param=name)
    return float(value)


def check_unicode(value, where: str = "the request") -> None:
    """Refuse a string (anywhere in a parsed JSON body) that holds a lone UTF-16 surrogate: JSON's "\\ud800"
    escapes make one, and no tokenizer takes it. Raises RequestError."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as problem:
            char = value[problem.start]
            raise RequestError(f"{where} holds \\u{ord(char):04x}, half of a UTF-16 surrogate pair, which is no "
                               "character; send text (a pair of \\u escapes must be high then low)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(item, key if where == "the request" else f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_unicode(item, f"{where}[{index}]")


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {value!r}", param=name)
    return value


def _is_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool)
                                                          for t in value)


def _texts_or_ids(value, name: str) -> list[str | list[int]]:
    """A string, a list of strings, a list of token ids or a list of lists of them, as one list of inputs."""
    if isinstance(value, str):
        return [value]
    if _is_ids(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) or _is_ids(item) for item in value):
        return value
    raise RequestError(f"{name} must be a string, a list of strings, a list of token ids or a list of lists of "
                       "token ids (none empty)", param=name)


@dataclass
class Completion:
    """A completions request read and queued: its choices' sequences, in choice order."""

    id: str
    created: int
    prompts: list[list[int]]
    prompt_texts: list[str]
    sequences: list[Sequence]
    n: int
    echo: bool
    logprobs: int | None
    stream: bool


class Service:
    """An opened model (lmkit.opening.OpenedModel) served under `name`.

    max_tokens_limit: the most max_tokens a request may ask for (the engine's backend is sized for it).
    A decoder-only model serves completions through `engine`; an encoder serves embeddings. An
    encoder-decoder (T5, the translation models) serves completions whose prompt is the source and whose
    text is the target, as `lmkit generate` gives it: the prompt is read by the source tokenizer, with
    the encoder's suffix (T5's </s>), and the text (stop sequences too) is the target tokenizer's.
    """

    def __init__(self, model, name: str, engine: ContinuousBatcher | None, max_tokens_limit: int):
        self.model = model
        self.name = name
        self.engine = engine
        self.tokenizer = model.tokenizer  # what prompts are read with
        self.sources = model.kind == "encoder-decoder"  # a prompt is a source, the text a target
        self.output = model.output_tokenizer if self.sources else model.tokenizer  # what the text is written with
        self.max_tokens_limit = max_tokens_limit
        self.created = int(time.time())

    def text(self, tokens: list[int], prompt: list[int] = ()) -> str:
        """Generated tokens as text: a continuation as it reads after its prompt (Tokenizer.continuation: a word-end
        BPE's space kept); an encoder-decoder's target as lmkit generate prints it, without its special tokens and
        the spaces at its ends (a streamed target's pieces add up to it: text(more) starts with text(some))."""
        if self.sources:
            return target_text(self.output, tokens)
        return self.output.continuation(prompt, tokens)

    # -- models ------------------------------------------------------------------------------------

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": self.created,
                                            "owned_by": "lmkit"}]}

    def check_model(self, body: dict) -> None:
        model = body.get("model")
        if model is not None and model != self.name:
            raise RequestError(f"this server serves the model {self.name!r}, not {model!r}; ask GET /v1/models",
                               status=404, param="model", code="model_not_found")

    # -- completions -------------------------------------------------------------------------------

    def completion(self, body) -> Completion:
        """Read a completions request (RequestError when it cannot be served) into sequences to submit."""
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        self.check_model(body)
        if self.engine is None:
            raise RequestError(f"{self.name} is an encoder: it embeds (POST /v1/embeddings) but does not generate",
                               param="model")
        for name in ("frequency_penalty", "presence_penalty"):
            if _number(body, name, 0.0) != 0.0:
                raise RequestError(f"{name} is not supported; leave it out or set it to 0", param=name)
        if body.get("logit_bias"):
            raise RequestError("logit_bias is not supported; leave it out", param="logit_bias")
        if body.get("suffix"):
            raise RequestError("suffix (insertion) is not supported; leave it out", param="suffix")
        if "prompt" not in body:
            raise RequestError("prompt is required: a string, a list of strings or token ids", param="prompt")
        prompts, texts = self._prompts(_texts_or_ids(body["prompt"], "prompt"))
        max_tokens = _integer(body, "max_tokens", 16, 1, self.max_tokens_limit)
        n = _integer(body, "n", 1, 1, MAX_CHOICES)
        best_of = _integer(body, "best_of", n, 1)
        if best_of != n:
            raise RequestError("best_of is not supported; leave it out or make it equal to n", param="best_of")
        logprobs = _integer(body, "logprobs", None, 0, MAX_LOGPROBS)
        echo, stream, ignore_eos = _flag(body, "echo"), _flag(body, "stream"), _flag(body, "ignore_eos")
        stop = self._stops(body.get("stop"))
        temperature, top_k, top_p, seed = self._sampling(body)
        if self.sources and echo and logprobs is not None:
            raise RequestError("echo with logprobs scores the prompt's tokens, and an encoder-decoder's prompt is its "
                               "source, which it reads but does not predict; leave out echo or logprobs",
                               param="echo")
        settings = Settings(max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            stop=stop, logprobs=logprobs, score_prompt=echo and logprobs is not None,
                            ignore_eos=ignore_eos)
        rows = [prompt for prompt in prompts for _ in range(n)]
        generators = row_generators(seed, rows) if temperature else [None] * len(rows)
        sequences = [Sequence(list(prompt), settings, generator) for prompt, generator in zip(rows, generators)]
        return Completion(f"cmpl-{uuid.uuid4().hex}", int(time.time()), prompts, texts, sequences, n, echo,
                          logprobs, stream)

    def _prompts(self, inputs: list) -> tuple[list[list[int]], list[str]]:
        if self.sources:
            return self._sources(inputs)
        tokenizer = self.tokenizer
        vocab = tokenizer.vocab_size
        prompts, texts = [], []
        limit = self.engine.max_length or UNBOUNDED_PROMPT_LIMIT  # a recurrent decoder still gets a bound
        for i, item in enumerate(inputs):
            label = "the prompt" if len(inputs) == 1 else f"prompt {i}"
            if isinstance(item, str):
                ids = tokenizer.encode(item)
            else:
                bad = [t for t in item if not 0 <= t < vocab]
                if bad:
                    raise RequestError(f"{label} has token id {bad[0]}, outside the vocabulary of {vocab}",
                                       param="prompt")
                ids = list(item)
            if not ids:  # an empty prompt starts from the bos token, as lmkit generate does
                if tokenizer.bos_id is None:
                    raise RequestError(f"{label} is empty and the tokenizer has no bos token to start from; "
                                       "give some text", param="prompt")
                ids = [tokenizer.bos_id]
            if limit is not None and len(ids) > limit:
                raise RequestError(f"{label} has {len(ids)} tokens but the model reads at most {limit}; "
                                   "shorten it", param="prompt", code="context_length_exceeded")
            prompts.append(ids)
            # An empty prompt is the bos token, which echo writes as text too (its logprobs' offsets count it).
            texts.append(item if isinstance(item, str) and item else tokenizer.decode(ids))
        return prompts, texts

    def _sources(self, inputs: list) -> tuple[list[list[int]], list[str]]:
        """An encoder-decoder's prompts: text as lmkit generate encodes a source, token ids as they are; both end
        with the encoder's suffix (T5's </s>; ids that end with it already keep theirs), and an empty source or
        one too long for the encoder is refused."""
        vocab, limit, suffix = self.tokenizer.vocab_size, self.model.max_positions, list(self.model.source_suffix)
        prompts = []
        for i, item in enumerate(inputs):
            label = "the prompt" if len(inputs) == 1 else f"prompt {i}"
            ids = self.tokenizer.encode(item) if isinstance(item, str) else list(item)
            if not ids:
                raise RequestError(f"{label} is empty; give a source to read", param="prompt")
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise RequestError(f"{label} has token id {bad[0]}, outside the source vocabulary of {vocab}",
                                   param="prompt")
            if isinstance(item, str) or ids[-len(suffix):] != suffix:
                ids += suffix
            if limit is not None and len(ids) > limit:
                raise RequestError(f"{label} has {len(ids)} tokens (the encoder's suffix included) but the encoder "
                                   f"reads at most {limit}; shorten it", param="prompt", code="context_length_exceeded")
            prompts.append(ids)
        return prompts, [item if isinstance(item, str) else self.tokenizer.decode(item) for item in inputs]

    def _stops(self, value):
        """The request's stop strings, matched on the text (lmkit.decoding.common.StopTexts), or ()."""
        if value is None:
            return ()
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise RequestError("stop must be a non-empty string or a list of them", param="stop")
        if len(values) > MAX_STOPS:
            raise RequestError(f"stop takes at most {MAX_STOPS} sequences, got {len(values)}", param="stop")
        from ..decoding.common import stop_texts

        return stop_texts(values, self.output) or ()

    def _sampling(self, body: dict) -> tuple[float, int, float, int | None]:
        """(temperature, top_k, top_p, seed): the request's, else the model's own decoding settings."""
        generation = self.model.generation
        defaults = generation["options"] if generation["strategy"] == "sample" else {}
        temperature = _number(body, "temperature", defaults.get("temperature", 1.0) if defaults else 0.0)
        if temperature < 0:
            raise RequestError(f"temperature must be 0 (greedy) or positive, got {temperature}", param="temperature")
        top_p = _number(body, "top_p", defaults.get("top_p", 1.0))
        if not 0 < top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {top_p}", param="top_p")
        top_k = _integer(body, "top_k", defaults.get("top_k", 0), 0)
        if top_k == -1:  # vLLM's "off"
            top_k = 0
        seed = _integer(body, "seed", defaults.get("seed"), 0)
        return temperature, top_k, top_p, seed

    # -- writing completions -------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        return self.output.decode([token])

    def _logprobs(self, tokens: list[int], logprobs: list, top: list, offset: int) -> dict:
        """OpenAI's logprobs object for these tokens, text offsets counted from `offset`."""
        strings = [self._token_text(t) for t in tokens]
        offsets = []
        for string in strings:
            offsets.append(offset)
            offset += len(string)
        return {"tokens": strings, "token_logprobs": logprobs,
                "top_logprobs": [None if alternatives is None else
                                 {self._token_text(t): lp for t, lp in alternatives} for alternatives in top],
                "text_offset": offsets}

    def choice(self, completion: Completion, index: int) -> dict:
        sequence = completion.sequences[index]
        prompt_index = index // completion.n
        prefix = completion.prompt_texts[prompt_index] if completion.echo else ""
        text = prefix + self.text(sequence.tokens, sequence.prompt) + sequence.tail
        logprobs = None
        if completion.logprobs is not None:
            tokens, values, top = list(sequence.tokens), list(sequence.token_logprobs), list(sequence.top_logprobs)
            if completion.echo:
                prompt = completion.prompts[prompt_index]
                tokens, values, top = (prompt + tokens, sequence.prompt_logprobs + values,
                                       sequence.prompt_top_logprobs + top)
            logprobs = self._logprobs(tokens, values, top, 0)
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(sequence)}

    def completion_response(self, completion: Completion) -> dict:
        choices = [self.choice(completion, i) for i in range(len(completion.sequences))]
        prompt_tokens = sum(map(len, completion.prompts))
        completion_tokens = sum(len(sequence.tokens) for sequence in completion.sequences)
        return {"id": completion.id, "object": "text_completion", "created": completion.created, "model": self.name,
                "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                              "total_tokens": prompt_tokens + completion_tokens}}

    def chunk(self, completion: Completion, index: int, text: str, logprobs: dict | None,
              finish: str | None) -> dict:
        """One server-sent event's completion chunk."""
        return {"id": completion.id, "object": "text_completion", "created": completion.created, "model": self.name,
                "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]}

    # -- the tokenizer (vLLM's /tokenize, /detokenize and /tokenizer_info: lm-eval's remote tokenizer) ----------

    def tokenizer_info(self) -> dict:
        tokens = self.tokenizer.special_tokens
        return {"tokenizer_class": f"lmkit.{self.tokenizer.kind}", "eos_token": tokens.get("eos"),
                "bos_token": tokens.get("bos"), "pad_token": tokens.get("pad"), "unk_token": tokens.get("unk"),
                "model_max_length": self.model.max_positions, "vocab_size": self.tokenizer.vocab_size}

    def tokenize(self, body) -> dict:
        """The prompt's tokens: without add_special_tokens, those the model reads for it, so that `count` is the
        prompt_tokens of its usage (an encoder's with [CLS] and [SEP], an encoder-decoder's source with its
        suffix, a decoder's as they are); with it, the tokenizer's encoding with or without its special tokens."""
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise RequestError("tokenize takes {\"prompt\": TEXT}", param="prompt")
        text = body["prompt"]
        if body.get("add_special_tokens") is not None:
            tokens = self.tokenizer.encode(text, add_special_tokens=_flag(body, "add_special_tokens"))
        elif self.model.kind == "encoder":
            from ..embedding import token_ids

            tokens = token_ids(self.tokenizer, [text])[0]
        elif self.sources:
            tokens = self.tokenizer.encode(text) + list(self.model.source_suffix)
        else:  # an empty prompt is the bos token, as completions read it (_prompts)
            tokens = self.tokenizer.encode(text) or ([self.tokenizer.bos_id] if self.tokenizer.bos_id is not None
                                                     else [])
        return {"tokens": tokens, "count": len(tokens), "max_model_len": self.model.max_positions}

    def detokenize(self, body) -> dict:
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not (tokens == [] or _is_ids(tokens)) or not all(0 <= t < self.tokenizer.vocab_size for t in tokens):
            raise RequestError(f"detokenize takes {{\"tokens\": [ids below {self.tokenizer.vocab_size}]}}",
                               param="tokens")
        return {"prompt": self.tokenizer.decode(tokens)}

    # -- embeddings --------------------------------------------------------------------------------

    def embeddings(self, body) -> dict:
        """The mean-pooled vector of each input text (lmkit embed's default pooling)."""
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        self.check_model(body)
        if self.model.kind != "encoder":
            article = "an" if self.model.kind.startswith("encoder") else "a"
            raise RequestError(f"{self.name} is {article} {self.model.kind} model: it generates (POST /v1/completions); "
                               "embeddings are served for encoder models", param="model")
        if "input" not in body:
            raise RequestError("input is required: a string or a list of strings", param="input")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if not inputs or not all(isinstance(item, str) for item in inputs):
            raise RequestError("input must be text: a string or a non-empty list of strings (token ids are not taken "
                               "here)", param="input")
        if body.get("dimensions") is not None:
            raise RequestError("dimensions is not supported: the vectors have the model's width; leave it out",
                               param="dimensions")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise RequestError(f"encoding_format must be float or base64, got {encoding!r}", param="encoding_format")
        from ..embedding import token_ids

        ids = token_ids(self.tokenizer, inputs)
        limit = self.model.max_positions
        for i, row in enumerate(ids):
            if limit is not None and len(row) > limit:
                raise RequestError(f"input {i} has {len(row)} tokens but the model reads at most {limit}; shorten it",
                                   param="input", code="context_length_exceeded")
        pooled, _, _ = self.model.embed(inputs, pooling="mean")
        vectors = np.asarray(pooled, dtype=np.float32)
        data = [{"object": "embedding", "index": i,
                 "embedding": vector.tolist() if encoding == "float" else base64.b64encode(vector.tobytes()).decode()}
                for i, vector in enumerate(vectors)]
        tokens = sum(map(len, ids))
        return {"object": "list", "data": data, "model": self.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def finish_reason(sequence: Sequence) -> str | None:
    """OpenAI's finish reasons: "stop" for the end-of-text token or a stop sequence, "length" for max_tokens."""
    if sequence.finish_reason is None:
        return None
    return "length" if sequence.finish_reason == "length" else "stop"


def open_service(path: str, *, name: str | None = None, max_batch: int = 32, max_tokens_limit: int | None = None,
                 device: str = "auto", provider: str | None = None) -> Service:
    """A model directory (PyTorch) or an export directory (onnxruntime) opened for serving.

    name: what /v1/models lists and requests may name (default: the directory's name).
    max_tokens_limit: the most max_tokens a request may ask (default: the model's context, else 1024).
    """
    import os

    from ..opening import open_model

    model = open_model(path, device=device, provider=provider)
    name = name or os.path.basename(os.path.normpath(path))
    if model.tokenizer is None:
        from ..opening import no_tokenizer

        raise no_tokenizer(path, "read requests with")
    if model.kind == "encoder":
        return Service(model, name, None, 0)
    if model.kind == "encoder-decoder":
        # A target has no context to end in (T5's positions are relative): the limit bounds the requests alone.
        limit = max_tokens_limit or DEFAULT_TARGET_LIMIT
        output = model.output_tokenizer
        pad_id = tokenizer_pad(model.tokenizer)
        engine = ContinuousBatcher(SourcePrompts(model.backend(limit), model.decoder_start), eos_id=output.eos_id,
                                   pad_id=pad_id, max_batch=max_batch)
        return Service(model, name, engine, limit)
    if model.generator is not None:
        raise LmkitError(f"{path} fills the blanks of its prompts rather than continuing them (its decoder has a "
                         "generator of its own); lmkit serve continues prompts: use lmkit generate for it")
    limit = max_tokens_limit or model.max_positions or 1024
    if limit < 1:
        raise LmkitError(f"the max_tokens limit must be at least 1, got {limit}")
    tokenizer = model.tokenizer
    pad_id = tokenizer_pad(tokenizer)
    # TorchBackend sizes its cache for max_new_tokens positions past a prefill; a sequence that scores its prompt
    # (echo with logprobs) is fed that prompt after the prefill too, so the cache is made as long as the context.
    room = model.max_positions or limit + UNBOUNDED_PROMPT_LIMIT
    engine = ContinuousBatcher(model.backend(room), eos_id=tokenizer.eos_id, pad_id=pad_id, max_batch=max_batch)
    return Service(model, name, engine, limit)


def tokenizer_pad(tokenizer) -> int | None:
    """The id prompts are padded with: the tokenizer's pad, else its eos."""
    return tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
