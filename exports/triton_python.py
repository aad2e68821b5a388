"""A Triton Inference Server python-backend model that runs lmkit's torch-free runtime: text in, text out.

`lmkit export --format triton` writes, beside the raw-graph model `<name>` (onnxruntime backend),
a model `<name>_text` whose `1/model.py` imports TritonPythonModel from here, and whose
config.pbtxt points it at the export in `../<name>`. An encoder-decoder (T5, the LSTM translation
models) has two graphs and a decoding loop between them, which no onnxruntime-backend model runs:
its `<name>` is this python-backend model itself, translating TEXT (its sources) into COMPLETION
(their targets), its export in its own folder (config.pbtxt, manifest, tokenizer) and its graphs
in `1/` beside `model.py`. Triton's python backend runs it in the
Python environment its stub starts in: the stub embeds the libpython found on LD_LIBRARY_PATH and
takes its environment from the `python3` first on PATH (it does not read PYTHONPATH), so start
Triton with the bin folder of an environment that has lmkit's `serve` extra first on PATH and its
interpreter's library folder (sysconfig's LIBDIR) on LD_LIBRARY_PATH, as PyTriton does.

Inputs, per request (Triton's dynamic batcher puts several requests in one execute() call):

    TEXT         TYPE_STRING (b, 1)  prompts, UTF-8
    MAX_TOKENS   TYPE_INT32  (b, 1)  optional: new tokens per prompt (default 16)
    TEMPERATURE  TYPE_FP32   (b, 1)  optional: 0 greedy, above 0 sampling (default: the export's settings)
    TOP_P        TYPE_FP32   (b, 1)  optional
    SEED         TYPE_INT64  (b, 1)  optional: sampling's seed, as `lmkit generate --seed`
Output:
    COMPLETION   TYPE_STRING (b, 1)  each prompt's continuation (the new text, as `lmkit generate --json`'s "text")

A request's optional inputs are read from its first row. Every prompt of every request in one
execute() call is decoded in one continuous batch (lmkit.serving.engine), each with its own
settings and seed, so a request gives the text `lmkit generate` gives, whatever it is batched with.

An encoder-decoder's model also takes NUM_BEAMS (TYPE_INT32, optional: above 1, beam search with that
many beams; 1, greedy). Its strategy: sampling when TEMPERATURE is above 0, else beam search when
NUM_BEAMS is above 1, else greedy when either is given, else the export's own settings (`lmkit
translate`'s default); MAX_TOKENS sets max_new_tokens. The requests of one execute() call that ask for
the same settings are translated as one batch (translation does not depend on what a source is
batched with), and each gives `lmkit translate`'s text for its settings and seed.
"""
from __future__ import annotations

import json
import os
import threading

import numpy as np

from .graphs import ENCODER_DECODER
from .manifest import read_manifest

OPTIONAL_INPUTS = {"MAX_TOKENS": "max_tokens", "TEMPERATURE": "temperature", "TOP_P": "top_p", "SEED": "seed"}
TRANSLATION_INPUTS = {**OPTIONAL_INPUTS, "NUM_BEAMS": "num_beams"}


def translation_settings(body: dict) -> tuple[str | None, dict]:
    """(strategy, options) of a translation request's body (see the module's docstring); None: the export's own."""
    temperature, beams = body.get("temperature"), body.get("num_beams")
    if temperature is not None and temperature > 0:
        strategy = "sample"
    elif beams is not None and beams > 1:
        strategy = "beam"
    elif temperature is not None or beams is not None:
        strategy = "greedy"
    else:
        strategy = None
    options = {key: body[key] for key in ("top_p", "seed") if key in body}
    if strategy == "sample":
        options["temperature"] = temperature
    if strategy == "beam":
        options["num_beams"] = beams
    if "max_tokens" in body:
        options["max_new_tokens"] = body["max_tokens"]
    return strategy, options


class TritonPythonModel:
    """What Triton's python backend calls: initialize(args), execute(requests), finalize()."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        from lmkit.serving.api import open_service

        self.pb_utils = pb_utils
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        export = os.path.normpath(os.path.join(args["model_repository"], parameters.get("export", "")))
        self.translator = None
        if read_manifest(export).get("architecture") == ENCODER_DECODER:
            from lmkit.opening import open_model

            self.translator = open_model(export, device=parameters.get("device", "cpu"))
            return
        self.service = open_service(export, name=args["model_name"], max_batch=int(parameters.get("max_batch", 32)),
                                    device=parameters.get("device", "cpu"))
        if self.service.engine is None:
            raise ValueError(f"{export} is an encoder export; the text model generates, so it needs a decoder")
        self.service.engine.start()

    def execute(self, requests: list) -> list:
        from lmkit.serving.api import RequestError

        if self.translator is not None:
            return self._translate(requests)
        pb_utils = self.pb_utils
        completions: list = []
        errors: dict[int, str] = {}
        for i, request in enumerate(requests):
            try:
                completions.append(self.service.completion(self._body(request)))
            except RequestError as problem:
                completions.append(None)
                errors[i] = str(problem)
        sequences = [sequence for completion in completions if completion is not None
                     for sequence in completion.sequences]
        finished = threading.Semaphore(0)
        failures: list[str] = []

        def on_event(sequence, kind, detail):
            if kind == "error":
                failures.append(str(detail))
            if kind in ("done", "error"):
                finished.release()

        for sequence in sequences:
            sequence.on_event = on_event
        if sequences:
            self.service.engine.submit(sequences)  # one submit: they join the batch together
        for _ in sequences:
            finished.acquire()
        responses = []
        for i, completion in enumerate(completions):
            if completion is None or failures:
                message = errors.get(i) or f"decoding failed: {failures[0]}"
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message)))
                continue
            texts = [self.service.tokenizer.decode(sequence.tokens) for sequence in completion.sequences]
            output = np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("COMPLETION", output)]))
        return responses

    def _translate(self, requests: list) -> list:
        """An encoder-decoder's execute(): each request's sources translated, one batch per setting asked for."""
        from lmkit.errors import LmkitError

        pb_utils = self.pb_utils
        outcomes: list = [None] * len(requests)  # per request: its texts, or why it failed
        groups: dict = {}  # (strategy, options) -> [(request index, its sources)]
        for i, request in enumerate(requests):
            body = self._body(request, TRANSLATION_INPUTS)
            strategy, options = translation_settings(body)
            groups.setdefault((strategy, tuple(sorted(options.items()))), []).append((i, body["prompt"]))
        for (strategy, options), members in groups.items():
            try:
                targets = iter(self.translator.generate([t for _, texts in members for t in texts], strategy,
                                                        **dict(options)))
                for i, texts in members:
                    outcomes[i] = [next(targets) for _ in texts]
            except (LmkitError, ValueError):
                # One request's input (a source too long, an empty one) must not fail the others it was batched
                # with, nor be named by its place in their batch: each request again, alone.
                for i, texts in members:
                    try:
                        outcomes[i] = self.translator.generate(texts, strategy, **dict(options))
                    except (LmkitError, ValueError) as problem:
                        outcomes[i] = str(problem)
        responses = []
        for outcome in outcomes:
            if isinstance(outcome, str):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(outcome)))
                continue
            output = np.array([[text.encode("utf-8")] for text in outcome], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("COMPLETION", output)]))
        return responses

    def _body(self, request, inputs: dict = OPTIONAL_INPUTS) -> dict:
        """The request as lmkit.serving.api's completion body: {"prompt": texts, option: value}."""
        pb_utils = self.pb_utils
        texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
        body: dict = {"prompt": [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]}
        for name, key in inputs.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                body[key] = tensor.as_numpy().reshape(-1)[0].item()
        return body

    def finalize(self) -> None:
        if self.translator is None:
            self.service.engine.stop()



MODEL_PY = '''"""lmkit's text-in, text-out model for Triton's python backend (written by lmkit export --format triton)."""
from lmkit.exports.triton_python import TritonPythonModel  # noqa: F401
'''


def config_pbtxt(name: str, export: str, max_batch: int = 32, translation: bool = False) -> str:
    """The python-backend model's configuration: `export` is the export's folder, relative to this model's.
    translation: an encoder-decoder's model, which also takes NUM_BEAMS."""
    beams = ['  { name: "NUM_BEAMS" data_type: TYPE_INT32 dims: [ 1 ] optional: true },'] if translation else []
    lines = [
        f'name: "{name}"',
        'backend: "python"',
        "# Requests queue for a moment and run in one execute() call, decoded in one batch by lmkit.",
        f"max_batch_size: {max_batch}",
        "dynamic_batching { max_queue_delay_microseconds: 2000 }",
        "input [",
        '  { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] },',
        '  { name: "MAX_TOKENS" data_type: TYPE_INT32 dims: [ 1 ] optional: true },',
        *beams,
        '  { name: "TEMPERATURE" data_type: TYPE_FP32 dims: [ 1 ] optional: true },',
        '  { name: "TOP_P" data_type: TYPE_FP32 dims: [ 1 ] optional: true },',
        '  { name: "SEED" data_type: TYPE_INT64 dims: [ 1 ] optional: true }',
        "]",
        "output [",
        '  { name: "COMPLETION" data_type: TYPE_STRING dims: [ 1 ] }',
        "]",
        f'parameters: {{ key: "export" value: {{ string_value: "{export}" }} }}',
        f'parameters: {{ key: "max_batch" value: {{ string_value: "{max_batch}" }} }}',
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
    ]
    return "\n".join(lines) + "\n"


def write_model_py(folder: str) -> None:
    """`folder/1/model.py`, the python backend's entry point."""
    from lmkit.artifacts import atomic_write

    os.makedirs(os.path.join(folder, "1"), exist_ok=True)
    with atomic_write(os.path.join(folder, "1", "model.py")) as handle:
        handle.write(MODEL_PY)


def write_text_model(repository: str, name: str) -> str:
    """Write the python-backend model `<name>_text` beside the export `<name>` in `repository`; its name."""
    from lmkit.artifacts import atomic_write

    text_name = f"{name}_text"
    folder = os.path.join(repository, text_name)
    os.makedirs(os.path.join(folder, "1"), exist_ok=True)
    with atomic_write(os.path.join(folder, "config.pbtxt")) as handle:
        handle.write(config_pbtxt(text_name, f"../{name}"))
    write_model_py(folder)
    return text_name
