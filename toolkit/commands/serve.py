"""`lmkit serve`: a model or export behind the OpenAI completions and embeddings API (click only at import)."""
from __future__ import annotations

import ipaddress
import socket

import click


@click.command("serve")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback opens the server to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on; 0 picks a free one (printed at start).")
@click.option("--name", help="The model's name in /v1/models and requests.  [default: MODEL_DIR's name]")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most sequences decoded together; more wait for a place.")
@click.option("--max-tokens-limit", type=click.IntRange(min=1),
              help="Most max_tokens a request may ask for.  [default: the model's context, else 1024 (an "
                   "encoder-decoder's target)]")
@click.option("--device", default="auto", show_default=True,
              help="auto (cuda when PyTorch, or onnxruntime for an export, has it), cpu, cuda or cuda:N.")
@click.option("--provider", metavar="NAME",
              help="Export directories only: the onnxruntime execution provider to run on, in place of --device.")
def serve_command(model_dir, host, port, name, max_batch, max_tokens_limit, device, provider):
    """Serve MODEL_DIR over HTTP with the OpenAI API until interrupted (Ctrl-C).

    MODEL_DIR is a model directory (run with PyTorch) or an export directory (run with onnxruntime,
    without PyTorch). A decoder-only model answers POST /v1/completions, an encoder-decoder too (each
    prompt is a source, each text its target), an encoder POST /v1/embeddings; all GET /v1/models and
    GET /health. Requests that arrive together are decoded together, in one batch that sequences join
    and leave at every step. See docs/serving.md.
    """
    from ..opening import is_export
    from ..serving.api import open_service
    from ..serving.app import _require_server_library, bind, create_app, run, url_of

    _require_server_library()
    exported = is_export(model_dir)
    if provider is not None and not exported:
        raise click.UsageError("--provider picks an onnxruntime execution provider for an export directory; "
                               f"{model_dir} is a model directory, run with PyTorch: use --device")
    if provider is not None and device != "auto":
        raise click.UsageError("give --device or --provider, not both")
    if not exported:
        from ..errors import require_torch

        require_torch("lmkit serve on a model directory")
    service = open_service(model_dir, name=name, max_batch=max_batch, max_tokens_limit=max_tokens_limit,
                           device=device, provider=provider)
    try:
        sock = bind(host, port)
    except socket.gaierror as problem:  # a host name that resolves to nothing
        raise click.ClickException(f"cannot listen on {host}:{port} ({problem.strerror or problem}); give --host an "
                                   "address of this machine (127.0.0.1, the default; 0.0.0.0 for every interface)") from None
    except OSError as problem:
        raise click.ClickException(f"cannot listen on {host}:{port} ({problem.strerror or problem}); "
                                   "pick another --port (0: any free one)") from None
    if not _loopback(host):
        click.echo(f"warning: listening on {host}, reachable from other machines; lmkit serve has no "
                   "authentication", err=True)
    endpoint = "/v1/embeddings" if service.engine is None else "/v1/completions"
    click.echo(f"serving {service.name} ({service.model.kind}, {'onnxruntime' if exported else 'PyTorch'}) at "
               f"{url_of(sock)}/v1 ({endpoint}); Ctrl-C stops", nl=True)
    import sys

    sys.stdout.flush()
    run(create_app(service), sock)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
