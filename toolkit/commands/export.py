"""`lmkit export`: a model directory to a validated ONNX export or Triton repository (click only at import)."""
from __future__ import annotations

import click


@click.command("export")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Export directory to write.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Precision of the weights; fp16 is for GPU serving (inputs and outputs stay fp32).")
@click.option("--quantize", type=click.Choice(["int8", "int4"]),
              help="int8: weight-only, blockwise (MatMulNBits), embeddings with a scale per row: a smaller model for "
                   "CPUs. int4: blockwise, the transformer blocks in 4 bits, the output projection in 8.")
@click.option("--int4-output", is_flag=True, help="With --quantize int4: the output projection in 4 bits too.")
@click.option("--int4-embeddings", is_flag=True, help="With --quantize int4: the token and position embeddings "
              "in 4 bits too.")
@click.option("--format", "layout", type=click.Choice(["onnx", "triton"]), default="onnx", show_default=True,
              help="An export directory, or a Triton model repository (NAME/config.pbtxt, NAME/1/model.onnx; an "
                   "encoder-decoder's NAME is a python-backend model over NAME/1/encoder.onnx and decoder.onnx).")
@click.option("--layout", "cache_layout", type=click.Choice(["fast", "genai"]), default="fast", show_default=True,
              help="A decoder's key/value cache: fast, onnxruntime's fused attention over buffers written in place "
                   "(where the model allows it: GPT's plain causal attention and T5's decoder, head size a multiple "
                   "of 8); genai, the concatenating layout onnxruntime-genai runs (genai_config.json, for a "
                   "decoder-only model), which copies the past at every step.")
@click.option("--name", help="Triton model name  [default: the name of MODEL_DIR]")
@click.option("--opset", type=click.IntRange(min=18), help="ONNX opset  [default: 18]")
@click.option("--atol", type=click.FloatRange(min=0), help="Largest difference from PyTorch an fp32 export may "
              "have on any output  [default: 1e-4]")
@click.option("--min-top1", type=click.FloatRange(0, 1), help="Smallest share of positions where an fp16 or "
              "quantized export picks PyTorch's top-1 token  [default: 0.9 fp16, 0.5 int8 and int4]")
@click.option("--license", "license_id", default="other", show_default=True,
              help="The model card's license: a Hugging Face license id (apache-2.0, mit, ...).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def export_command(model_dir, out, dtype, quantize, int4_output, int4_embeddings, layout, cache_layout, name, opset,
                   atol, min_top1, license_id, force):
    """Export MODEL_DIR to ONNX, validated against PyTorch, with a manifest of hashes."""
    from lmkit.exports.convert import DEFAULT_OPSET
    from lmkit.exports.export import export_model
    from lmkit.exports.precision import Int4Options
    from lmkit.exports.validation import THRESHOLDS, Threshold

    if quantize and dtype != "fp32":
        raise click.UsageError(f"--quantize {quantize} starts from fp32 weights; leave out --dtype")
    if (int4_output or int4_embeddings) and quantize != "int4":
        raise click.UsageError("--int4-output and --int4-embeddings go with --quantize int4")
    if name and layout != "triton":
        raise click.UsageError("--name names a Triton model; add --format triton")
    precision = quantize or dtype
    if atol is not None and precision != "fp32":
        raise click.UsageError("--atol bounds an fp32 export; an fp16, int8 or int4 one is held to --min-top1")
    if min_top1 is not None and precision == "fp32":
        raise click.UsageError("--min-top1 is for fp16, int8 and int4 exports; an fp32 one is held to --atol")
    threshold = THRESHOLDS[precision]
    if atol is not None:
        threshold = Threshold(max_abs_diff=atol)
    if min_top1 is not None:
        threshold = Threshold(min_top1_agreement=min_top1)
    manifest = export_model(model_dir, out, precision=precision, layout=layout, name=name,
                            opset=opset or DEFAULT_OPSET, threshold=threshold, force=force,
                            progress=lambda line: click.echo(line, err=True),
                            int4=Int4Options(output_bits=4 if int4_output else 8, embeddings=int4_embeddings),
                            license=license_id, cache_layout=cache_layout)
    report = manifest["validation"]
    shapes = len(report["shape_sets"])
    agreement = report["top1_agreement"]
    click.echo(f"validated against PyTorch at {shapes} shape sets: max |difference| {report['max_abs_diff']:.2g}"
               + (f", top-1 agreement {agreement:.1%}" if agreement is not None else ""), err=True)
    size = sum(entry["size"] for entry in manifest["files"].values())
    where = f"{out}/{manifest['triton']['name']}" if manifest["triton"] else out
    click.echo(f"wrote {len(manifest['files']) + 1} files, {size / 1e6:.1f} MB: {where}", err=True)
    click.echo(out)
