"""`lmkit serve` under a bounded loopback load: tokens/s and latency for 1, 4 and 16 concurrent clients.

    python benchmarks/bench_serve.py [--model DIR] [--size gpt-mini] [--requests 48] [--max-tokens 64]
                                     [--prompt-tokens 16] [--clients 1 4 16] [--threads 2] [--work DIR]

One set of --requests requests (each a --prompt-tokens-token prompt of random token ids, greedy,
--max-tokens new tokens, ignore_eos so every request generates them all) is sent by C clients at
once for each C in --clients: each client sends its next request as soon as its last one is
answered, until the set is done. C = 1 is the same requests one at a time. The server is lmkit's
own (lmkit.serving: the continuous batcher, starlette, uvicorn) on 127.0.0.1, in this process, on
a free port; the clients are threads with the standard library's HTTP client. Nothing leaves the
machine, and every run is bounded: a fixed number of requests, each with a 300 s time-out.

Printed per C: wall time, generated tokens per second over the wall time, p50 and p99 request
latency (p99 of a few dozen requests is close to the slowest), the speed-up in tokens/s over C = 1,
and the engine's counters over the run: backend calls, rows per call, and the positions of the prompts
that joined, padding included (running rows are not computed again: Backend.merge, lmkit.serving.engine).

--model: a model directory or export to serve (the default builds a random GPT-2 of --size with a
byte-level BPE tokenizer under --work and serves its fp32 export, onnxruntime on the CPU, without torch
in the serving path). Threads: onnxruntime's intra-op threads and torch.set_num_threads.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import statistics
import tempfile
import threading
import time
import urllib.parse

SIZES = {
    "gpt-tiny": dict(n_layers=2, d_model=64, n_heads=4, max_positions=128),
    "gpt-mini": dict(n_layers=6, d_model=384, n_heads=6, max_positions=256),
}
VOCAB = 1024


def build(size: str, work: str) -> str:
    """The fp32 export of a random GPT-2 of `size` with a byte-level BPE of VOCAB tokens (built once)."""
    from lmkit.exports.export import export_model
    from lmkit.exports.manifest import MANIFEST
    from lmkit.model import compose
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions

    root = os.path.join(work, size)
    out = os.path.join(root, "fp32")
    if os.path.isfile(os.path.join(out, MANIFEST)):
        return out
    os.makedirs(root, exist_ok=True)
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(400)]
    corpus = os.path.join(root, "text.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(" ".join(rng.choice(words) for _ in range(16)) for _ in range(3000)))
    tokenizer = ByteLevelBPE.train([corpus], ByteLevelBPEOptions(vocab_size=VOCAB), progress=False)
    tokenizer.save(os.path.join(root, "tok"))
    overrides = [f"decoder.{key}={value}" for key, value in SIZES[size].items()]
    overrides += [f"decoder.vocab_size={tokenizer.vocab_size}", f"tokenizer={os.path.join(root, 'tok')}",
                  "decoder.dropout=0.0"]
    compose("gpt2-tiny", overrides, os.path.join(root, "model"), force=True)
    start = time.perf_counter()
    export_model(os.path.join(root, "model"), out, force=True)
    print(f"  built and exported {size} in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def post(url: str, body: dict) -> dict:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    try:
        connection.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"the server answered {response.status}: {answer}")
        return answer
    finally:
        connection.close()


def health(url: str) -> dict:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("GET", "/health")
    answer = json.loads(connection.getresponse().read())
    connection.close()
    return answer["engine"]


def load(url: str, bodies: list[dict], clients: int) -> tuple[float, list[float], int]:
    """(wall seconds, each request's latency, tokens generated): `clients` threads work through `bodies`."""
    work: queue.Queue = queue.Queue()
    for body in bodies:
        work.put(body)
    latencies: list[float] = []
    tokens = [0]
    failures: list[BaseException] = []
    lock = threading.Lock()

    def client():
        while True:
            try:
                body = work.get_nowait()
            except queue.Empty:
                return
            start = time.perf_counter()
            try:
                answer = post(url, body)
            except BaseException as error:  # noqa: BLE001 - reported below, after the other clients end
                failures.append(error)
                return
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens[0] += answer["usage"]["completion_tokens"]

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        raise failures[0]
    return wall, latencies, tokens[0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a model directory or export to serve (default: build one)")
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt-mini")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", help="where the built model is kept between runs (default: a temporary folder)")
    args = parser.parse_args()

    from lmkit.serving.api import open_service
    from lmkit.serving.app import BackgroundServer, create_app

    work = args.work or tempfile.mkdtemp(prefix="bench-serve-")
    model = args.model or build(args.size, work)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    service = open_service(model, name="bench", max_batch=args.max_batch, max_tokens_limit=args.max_tokens,
                           device=args.device)
    vocab = service.tokenizer.vocab_size
    rng = random.Random(0)
    bodies = [{"prompt": [rng.randrange(vocab) for _ in range(args.prompt_tokens)], "max_tokens": args.max_tokens,
               "temperature": 0, "ignore_eos": True} for _ in range(args.requests)]
    print(f"serving {model} ({service.model.kind}); {args.requests} requests of {args.prompt_tokens} prompt tokens "
          f"+ {args.max_tokens} new, greedy; max batch {args.max_batch}; {os.cpu_count()} CPUs", flush=True)
    with BackgroundServer(create_app(service)) as url:
        post(url, bodies[0])  # warm-up: the first run's allocations and graph optimisations
        rows = []
        for clients in args.clients:
            before = health(url)
            wall, latencies, tokens = load(url, bodies, clients)
            after = health(url)
            calls = after["calls"] - before["calls"]
            rows.append(dict(clients=clients, wall=wall, tokens_per_s=tokens / wall,
                             p50=percentile(latencies, 0.5), p99=percentile(latencies, 0.99),
                             mean=statistics.mean(latencies), calls=calls,
                             rows_per_call=(after["rows"] - before["rows"]) / calls,
                             joined=after["prefill_positions"] - before["prefill_positions"],
                             prefills=after["prefills"] - before["prefills"], tokens=tokens))
    base = rows[0]["tokens_per_s"]
    print(f"{'clients':>7} {'wall s':>7} {'tok/s':>8} {'x c=1':>6} {'p50 s':>7} {'p99 s':>7} {'calls':>6} "
          f"{'rows/call':>9} {'joins':>6} {'joined':>10}")
    for row in rows:
        print(f"{row['clients']:>7} {row['wall']:>7.2f} {row['tokens_per_s']:>8.1f} {row['tokens_per_s'] / base:>6.2f} "
              f"{row['p50']:>7.3f} {row['p99']:>7.3f} {row['calls']:>6} {row['rows_per_call']:>9.2f} "
              f"{row['prefills']:>6} {row['joined']:>10}")


if __name__ == "__main__":
    main()
