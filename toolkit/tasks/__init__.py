"""Supervised tasks: labelled task files, how each model family turns an example into its inputs,
the metrics of each task, and `lmkit finetune`.

    formats.py   task files (JSONL, GLUE-style TSV) read into Examples, checked line by line
    metrics.py   accuracy, F1, Matthews correlation, Pearson and Spearman (numpy only)
    inputs.py    examples to token ids: GPT's input transformations, BERT's [CLS] a [SEP] b [SEP]
    finetune.py  a pretrained model plus a task head, trained with the shared trainer
"""
