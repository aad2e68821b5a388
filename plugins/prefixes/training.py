"""Training contrastive prefixes over a frozen model directory (what `lmkit train-prefix` runs)."""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from lmkit.errors import DataError, LmkitError

from .model import AttributePrefixes, LatentPrefixes, cache_geometry, prefix_from_tokens


def read_examples(path: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file; DataError in one line otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start}); convert it to UTF-8") from None
    examples = [line for line in lines if line]
    if not examples:
        raise DataError(f"{path} has no examples; give a text file of one example per line")
    return examples


def encode_examples(tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Each text as [start] + tokens + [eos], at most max_tokens long; start is bos (else eos), the token a
    document follows in causal-LM training, so the text's first token is scored too."""
    start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if start is None:
        raise LmkitError("the model's tokenizer has neither a bos nor an eos token to start each example from")
    end = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    return [([start] + ids + end)[:max_tokens] for ids in tokenizer.encode_batch(texts)]


def pad_batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and their bool mask."""
    T = max(len(row) for row in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = True
    return ids, mask


def read_pairs(path: str) -> list[tuple[str, str]]:
    """An encoder-decoder's examples: (source, target) of each non-empty line SOURCE<TAB>TARGET; DataError otherwise."""
    pairs = []
    for number, line in enumerate(read_examples(path), 1):
        source, tab, target = line.partition("\t")
        if not tab or not source.strip() or not target.strip():
            raise DataError(f"example {number} of {path} is not SOURCE<TAB>TARGET; an encoder-decoder's prefix is "
                            "trained on targets after their sources, one pair per line")
        pairs.append((source.strip(), target.strip()))
    return pairs


def train_prefixes(model_dir: str, sources: list[tuple[str, str]], out: str, *, length: int = 10,
                   lm_weight: float = 1.0, contrast_weight: float = 1.0, steps: int = 300, batch_size: int = 16,
                   lr: float = 1e-2, max_tokens: int = 64, seed: int = 0, device: str = "auto",
                   log: Callable[[str], None] | None = None, unsupervised: int | None = None, kl_weight: float = 1.0,
                   margin: float = 1.0, temperature: float = 1.0) -> dict:
    """Train one prefix per attribute of `sources` [(file, attribute)] and write them to out/prefixes.safetensors.

    Returns {"path", "attributes", "final": the last step's metrics}. The model's parameters are
    never changed (requires_grad off, nothing written to model_dir but the prefix file if out is it).
    Each prefix starts from the keys/values of the first `length` tokens of a random example of any
    attribute (prefix tuning's initialisation from real tokens), a different one per attribute.
    A decoder-only model's examples are texts, one per line; an encoder-decoder's SOURCE<TAB>TARGET lines,
    the prefix before the target in its decoder.

    unsupervised=K: K prefixes for latent attributes z0 ... z{K-1}, learnt from unlabelled texts (the sources'
    attributes are ignored) with LatentPrefixes' objective (kl_weight, margin, temperature; contrast_weight weighs
    its margin term); decoder-only models.
    """
    from lmkit.model import load_model, load_target_tokenizer
    from lmkit.parallel import pad_sources
    from lmkit.prefix import save_prefixes
    from lmkit.seq2seq import encode_sources, source_suffix_ids
    from lmkit.training.distributed import resolve_device

    resolved = resolve_device(device)
    model, tokenizer, config = load_model(model_dir, device=str(resolved))
    if model.kind == "encoder":
        raise LmkitError(f"{model_dir} is an encoder model; prefixes steer models that generate (GPT, GLM, T5)")
    if tokenizer is None:
        raise LmkitError(f"{model_dir} has no tokenizer to read the examples with; compose it with --set tokenizer=DIR")
    seq2seq = model.kind == "encoder-decoder"
    if unsupervised and seq2seq:
        raise LmkitError(f"{model_dir} is an encoder-decoder; --unsupervised infers a text's latent attribute from a "
                         "decoder-only model's states of it: give labelled --data FILE:ATTRIBUTE instead")
    decoder_type = config["spec"]["decoder"]["type"]
    model.eval()  # frozen, and without dropout: the model is what it was trained to be
    n_layers, n_heads, head_dim = cache_geometry(model)
    decoder = model.decoder
    room = decoder.max_positions - length if decoder.max_positions is not None else max_tokens
    if room < 2:
        raise LmkitError(f"a prefix of {length} positions leaves {max(room, 0)} of the model's "
                         f"{decoder.max_positions} for a text, and a text needs 2 or more; give a --length of at most "
                         f"{decoder.max_positions - 2}")
    max_tokens = min(max_tokens, room)

    attributes = ([f"z{k}" for k in range(unsupervised)] if unsupervised
                  else list(dict.fromkeys(attribute for _, attribute in sources)))
    examples: list[list[int]] = []
    source_ids: list[list[int]] = []
    labels: list[int] = []
    for path, attribute in sources:
        if seq2seq:
            pairs = read_pairs(path)
            source_ids += encode_sources(tokenizer, [source for source, _ in pairs], model.encoder.max_positions,
                                         source_suffix_ids(model.encoder, tokenizer))
            target_tokenizer = load_target_tokenizer(model_dir) or tokenizer
            start = decoder.decoder_start_token_id(target_tokenizer)
            end = [target_tokenizer.eos_id] if target_tokenizer.eos_id is not None else []
            encoded = [([start] + ids + end)[:max_tokens]
                       for ids in target_tokenizer.encode_batch([target for _, target in pairs])]
        else:
            encoded = encode_examples(tokenizer, read_examples(path), max_tokens)
        examples += encoded
        labels += [0 if unsupervised else attributes.index(attribute)] * len(encoded)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    starts = [i for i, row in enumerate(examples) if len(row) >= length]
    if not starts:
        raise DataError(f"no example has the {length} tokens a prefix starts from; give a shorter --length")
    chosen_starts = rng.choice(len(starts), size=len(attributes), replace=len(starts) < len(attributes))
    init = torch.stack([prefix_from_tokens(model, examples[starts[i]][:length],
                                           source_ids[starts[i]] if seq2seq else None) for i in chosen_starts])
    prefixes = (LatentPrefixes if unsupervised else AttributePrefixes)(model, init.to(resolved)).to(resolved)
    trained = [prefixes.prefixes, *(prefixes.encoder_head.parameters() if unsupervised else ())]
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id or 0
    labels_array = np.asarray(labels)
    metrics: dict = {}
    for step in range(1, steps + 1):
        chosen = rng.choice(len(examples), size=min(batch_size, len(examples)), replace=False)
        ids, mask = pad_batch([examples[i] for i in chosen], pad_id)
        batch_sources = None
        if seq2seq:
            src, src_mask = pad_sources([source_ids[i] for i in chosen], pad_id)
            batch_sources = (torch.from_numpy(src).to(resolved), torch.from_numpy(src_mask).to(resolved))
        if unsupervised:
            loss, metrics = prefixes.unsupervised_loss(ids.to(resolved), mask.to(resolved), lm_weight, kl_weight,
                                                       contrast_weight, margin, temperature)
        else:
            loss, metrics = prefixes.loss(ids.to(resolved), mask.to(resolved),
                                          torch.from_numpy(labels_array[chosen]).to(resolved), lm_weight,
                                          contrast_weight, batch_sources)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log is not None and (step % max(1, steps // 10) == 0 or step == steps):
            shown = ("kl", "c", "usage") if unsupervised else ("d", "accuracy") if contrast_weight else ()
            log(f"step {step}/{steps}  loss {loss.item():.4f}  lm {metrics['lm']:.4f}"
                + "".join(f"  {name} {metrics[name]:.4f}" for name in shown))
    if not bool(torch.isfinite(prefixes.prefixes).all()):  # as lmkit train: nothing diverged is saved
        from lmkit.training.arguments import TrainingError

        raise TrainingError(f"training diverged: the prefixes are not finite after {steps} steps (learning rate "
                            f"{lr:g}); train again with a lower --lr (say {lr / 10:g}); nothing was written")
    values = prefixes.prefixes.detach().float().cpu().numpy()
    method = "unsupervised (latent attributes, Gumbel-softmax)" if unsupervised else "supervised"
    settings = {"kl_weight": kl_weight, "margin": margin, "temperature": temperature} if unsupervised else {}
    info = {"method": f"contrastive prefixes (Qian et al. 2022), {method}", **settings,
            "model": os.path.abspath(model_dir), "decoder": decoder_type,
            "lm_weight": lm_weight, "contrast_weight": contrast_weight, "steps": steps, "batch_size": batch_size,
            "lr": lr, "seed": seed,
            "examples": ({"unlabelled": len(examples)} if unsupervised
                         else {name: int((labels_array == i).sum()) for i, name in enumerate(attributes)}),
            "final": metrics}
    path = save_prefixes(out, dict(zip(attributes, values)), info)
    return {"path": path, "attributes": attributes, "final": metrics}
