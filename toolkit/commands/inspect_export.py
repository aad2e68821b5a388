"""`lmkit inspect`: what an export directory holds and whether its files are intact (click only at import)."""
from __future__ import annotations

import json
import re

import click


@click.command("inspect")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The manifest, with each file's check, as JSON.")
def inspect_command(directory, as_json):
    """Inputs, outputs, parity with PyTorch and files of the export in DIRECTORY.

    Every file is checked against its sha256; a changed or missing one makes the exit status 1.
    """
    from lmkit.errors import ArtifactError
    from lmkit.exports.manifest import file_problem, read_manifest

    manifest = read_manifest(directory)
    problems = {name: file_problem(directory, name, entry) for name, entry in manifest["files"].items()}
    if as_json:
        files = {name: {**entry, "status": problems[name] or "ok"} for name, entry in manifest["files"].items()}
        click.echo(json.dumps({**manifest, "files": files}, indent=2))
    else:
        _describe(directory, manifest, problems)
    broken = [f"{name} {problem}" for name, problem in problems.items() if problem]
    if broken:
        raise ArtifactError(f"{directory}: {broken[0]}" + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else "")
                            + "; the runtime will refuse this export")


def _describe(directory: str, manifest: dict, problems: dict) -> None:
    exporter = manifest.get("exporter", {})
    click.echo(f"{directory}  (lmkit {manifest.get('lmkit_version')}, exporter {exporter.get('name')} "
               f"from plugin {exporter.get('plugin')})")
    click.echo(f"  architecture: {manifest.get('architecture')}   dtype: {manifest.get('dtype')}   "
               f"opset: {manifest.get('opset')}")
    quantization = manifest.get("quantization")
    if quantization:  # whether a row depends on its batch follows from it (docs/export.md)
        described = [quantization.get("method"), f"weights {quantization.get('weights')}",
                     f"block {quantization['block_size']}" if "block_size" in quantization else None,
                     f"{quantization['dynamic'].get('nodes')} nodes dynamic"
                     if isinstance(quantization.get("dynamic"), dict) else None]
        click.echo("  quantization: " + ", ".join(part for part in described if part))
    if manifest.get("triton"):
        click.echo(f"  triton model: {manifest['triton']['name']} ({manifest['triton']['config']})")
    dimensions = manifest.get("dimensions") or {}
    click.echo("  dimensions: " + " ".join(f"{key}={value}" for key, value in dimensions.items()))
    generation = manifest.get("generation") or {}
    options = " ".join(f"{key}={value}" for key, value in (generation.get("options") or {}).items())
    click.echo(f"  generation: {generation.get('strategy')} {options}".rstrip())
    special = {role: token for role, token in (manifest.get("special_tokens") or {}).items() if token is not None}
    click.echo("  special tokens: " + (" ".join(f"{role}={token}" for role, token in special.items()) or "none"))
    for graph_name, graph in manifest["graphs"].items():
        click.echo(f"graph {graph_name} ({graph['file']}):")
        for side in ("inputs", "outputs"):
            click.echo(f"  {side}:")
            for name, dtype, shape in _grouped(graph[side]):
                click.echo(f"    {name:<32} {dtype:<8} [{', '.join(map(str, shape))}]")
    _describe_validation(manifest.get("validation") or {})
    click.echo("files:")
    for name, entry in manifest["files"].items():
        click.echo(f"  {name:<32} {entry['size']:>14,} bytes  {problems[name] or 'ok'}")


def _grouped(tensors: list[dict]):
    """Tensors that differ only by a layer number, as one line: past_key_values.{0..11}.key."""
    groups: dict[tuple, list[int]] = {}
    for tensor in tensors:
        layer = re.search(r"\.(\d+)\.", tensor["name"])
        pattern = re.sub(r"\.\d+\.", ".{}.", tensor["name"]) if layer else tensor["name"]
        key = (pattern, tensor["dtype"], tuple(tensor["shape"]))
        groups.setdefault(key, []).append(int(layer.group(1)) if layer else -1)
    for (pattern, dtype, shape), layers in groups.items():
        if len(layers) > 1:
            # 0..11 for a run of layers; otherwise each, e.g. GPT-3's banded layers {1,3,5}
            run = layers == list(range(min(layers), max(layers) + 1))
            pattern = pattern.replace("{}", "{" + (f"{min(layers)}..{max(layers)}" if run
                                                   else ",".join(map(str, layers))) + "}")
        elif layers[0] >= 0:
            pattern = pattern.replace("{}", str(layers[0]))
        yield pattern, dtype, shape


def _describe_validation(report: dict) -> None:
    if not report:
        click.echo("parity with PyTorch: not measured")
        return
    limits = ", ".join(f"{key} {value:g}" for key, value in report.get("threshold", {}).items())
    agreement = report.get("top1_agreement")
    click.echo(f"parity with {report.get('reference')} on {report.get('runtime')} (required: {limits}):")
    click.echo(f"  max |difference| {_number(report.get('max_abs_diff'))}"
               + (f", top-1 agreement {_share(agreement)}" if agreement is not None else ""))
    rows = []
    for shape_set in report.get("shape_sets", []):
        row = {"shape set": ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in shape_set.items()
                                      if isinstance(value, int) and not isinstance(value, bool))}
        row.update((name, _number(value)) for name, value in (shape_set.get("max_abs_diff") or {}).items())
        if shape_set.get("top1_agreement") is not None:
            row["top-1"] = _share(shape_set["top1_agreement"])
        rows.append(row)
    if not rows:
        return
    columns = list(dict.fromkeys(column for row in rows for column in row))
    widths = {column: max(len(column), *(len(row.get(column, "")) for row in rows)) for column in columns}
    for row in [dict(zip(columns, columns)), *rows]:
        click.echo("  " + "  ".join(row.get(column, "").ljust(widths[column]) for column in columns).rstrip())


# The manifest comes with the export, from anywhere: show what is there, whatever its type.
def _number(value) -> str:
    return f"{value:.2g}" if isinstance(value, (int, float)) else str(value)


def _share(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else str(value)
