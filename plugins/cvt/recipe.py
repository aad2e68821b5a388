"""How `lmkit finetune` trains a CVT tagger (lmkit.contract.TaskRecipe), registered as the "cvt" recipe.

Clark et al. 2018 §3.2: labelled and unlabelled batches alternate. A labelled batch trains the
primary module (the encoder and the token head) on gold tags; an unlabelled batch (from
`--unlabeled`) trains the auxiliary modules (the `cvt` objective, plugins/cvt/objective.py) toward
the primary's predictions. Without --unlabeled the recipe trains the primary alone: the supervised
baseline CVT is measured against. Sequence tasks read the mean of the primary's hidden layer.
"""
from __future__ import annotations

import numpy as np

from lmkit.errors import LmkitError
from lmkit.tasks.recipes import EncoderRecipe


class CVTRecipe(EncoderRecipe):
    name = "cvt"
    stacks = ("cvt-tagger",)  # the auxiliary modules read its forward and backward LSTMs
    default_lr = 1e-3  # Adam (the paper's SGD at 0.5 is `--optimizer sgd --schedule cvt` under lmkit train)
    reference_width = 1  # the rate does not scale with the model's width
    default_warmup_ratio = 0.0
    reads_unlabeled = True
    label_smoothing = 0.1  # of the labelled loss (cvt_text multitask_model.py)

    def objectives_beside(self, head: dict, options) -> list[dict]:
        """The auxiliary modules, sized to the head's tags; only a tagger has them (CVT's views are per token)."""
        if head["type"] != "token-head":
            if options.unlabeled is not None:
                raise LmkitError(f"--unlabeled: the cvt recipe learns from unlabelled text for token classification "
                                 f"only, not {options.kind}; leave --unlabeled out")
            return []
        return [{"type": "cvt", "weight": 1.0, "num_labels": head["num_labels"]}]

    def finetune_multitask(self, pretrained, out, tasks, dev, options, **training) -> dict:
        """Several tagging tasks on one encoder (lmkit finetune --multitask): plugins/cvt/multitask.py."""
        from .multitask import finetune_multitask

        return finetune_multitask(pretrained, out, tasks, dev, options, **training)

    def resume_multitask(self, out, options, args, state, *, progress: bool = True) -> dict:
        """Go on with the --multitask run in `out` from its last checkpoint (lmkit finetune --resume)."""
        from .multitask import resume_multitask

        return resume_multitask(out, options, args, state, progress=progress)

    def unlabeled_batches(self, labelled, sentences, tokenizer, args):
        return AlternatingBatches(labelled, sentences, tokenizer, args)


class AlternatingBatches:
    """A labelled batch at even steps, an unlabelled one (input_ids, attention_mask, unlabeled) at odd steps.

    Both kinds go through their own seeded order, so a resumed run reads the same batches. Unlabelled
    sentences longer than --max-length tokens are cut to it.
    """

    def __init__(self, labelled, sentences: list[tuple[str, ...]], tokenizer, args):
        from lmkit.data import SeededOrder
        from lmkit.tasks.tokens import TaggedData, TaggedSentence, encode_sentences

        self.labelled, self.batch_size = labelled, args.batch_size
        data = TaggedData("unlabeled", [TaggedSentence(words, (0,) * len(words)) for words in sentences], (), "--unlabeled")
        encoded, _ = encode_sentences(data, tokenizer, args.seq_len, encoder=True)
        self.unlabeled = [sentence.ids for sentence in encoded if sentence.ids]
        self.order = SeededOrder(len(self.unlabeled), args.seed + 1)
        self.pad_id = labelled.pad_id

    def train(self, first: int, count: int) -> dict[str, np.ndarray]:
        step, offset = divmod(first, self.batch_size)
        start = (step // 2) * self.batch_size + offset
        if step % 2 == 0:
            return self.labelled.train(start, count)
        rows = [self.unlabeled[i] for i in self.order.indices(start, count)]
        T = max(len(r) for r in rows)
        input_ids = np.full((len(rows), T), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), T), dtype=bool)
        for b, ids in enumerate(rows):
            input_ids[b, :len(ids)], attention_mask[b, :len(ids)] = ids, True
        return {"input_ids": input_ids, "attention_mask": attention_mask, "unlabeled": np.ones(len(rows), dtype=bool)}

    @property
    def dev(self):
        return self.labelled.dev

    @property
    def examples(self):
        return self.labelled.examples

    def validation(self):
        return self.labelled.validation()

    def tokens(self, batch) -> int:
        return int(batch["attention_mask"].sum())

    def describe(self) -> dict:
        return {**self.labelled.describe(), "unlabeled_sentences": len(self.unlabeled)}
