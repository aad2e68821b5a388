"""The metrics of GLUE-style tasks, from predictions and gold labels (numpy arrays).

Each equals the function GLUE's evaluation uses (scikit-learn's f1_score and matthews_corrcoef,
scipy's pearsonr and spearmanr), edge cases included, with one decision where those give no number:

- F1 when a class is never predicted or never gold: precision or recall is 0/0, taken as 0
  (scikit-learn's zero_division=0; its default "warn" also gives 0).
- Matthews correlation with one class present (in gold or predictions): 0/0, taken as 0 (scikit-learn).
- Pearson and Spearman when predictions (or gold) are constant: scipy gives nan. Here they are 0.0:
  a constant prediction explains none of the variation, nan would make every later "is this step
  better?" comparison false (the best checkpoint could never be replaced by a better one), and
  JSON has no nan. So a collapsed regression head reads 0, as a chance classifier's MCC does.
"""
from __future__ import annotations

import numpy as np


def accuracy(predicted: np.ndarray, gold: np.ndarray) -> float:
    """The share of predictions equal to the gold label."""
    return float(np.mean(predicted == gold)) if len(gold) else 0.0


def f1(predicted: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class (MRPC, QQP): scikit-learn's f1_score, 0.0 when it has no true positive."""
    true_positive = np.sum((predicted == positive) & (gold == positive))
    predicted_positive, gold_positive = np.sum(predicted == positive), np.sum(gold == positive)
    if true_positive == 0:
        return 0.0
    precision, recall = true_positive / predicted_positive, true_positive / gold_positive
    return float(2 * precision * recall / (precision + recall))


def macro_f1(predicted: np.ndarray, gold: np.ndarray, classes: int = 0) -> float:
    """The mean F1 over the classes that occur in gold or predictions, each in turn the positive one
    (scikit-learn's f1_score(average="macro")); a class absent from both is not averaged in."""
    present = np.union1d(np.unique(predicted), np.unique(gold))
    return float(np.mean([f1(predicted, gold, positive=c) for c in present])) if len(present) else 0.0


def matthews_correlation(predicted: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation of a binary task (CoLA): 0 for chance, 1 for perfect, whatever the class balance
    (scikit-learn's matthews_corrcoef, 0.0 when a row or column of the confusion matrix is empty)."""
    tp = float(np.sum((predicted == 1) & (gold == 1)))
    tn = float(np.sum((predicted == 0) & (gold == 0)))
    fp = float(np.sum((predicted == 1) & (gold == 0)))
    fn = float(np.sum((predicted == 0) & (gold == 1)))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator else 0.0


def pearson(predicted: np.ndarray, gold: np.ndarray) -> float:
    """Pearson's r (scipy.stats.pearsonr); 0.0 where either side is constant (see the module docstring)."""
    predicted, gold = np.asarray(predicted, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if len(gold) < 2:
        return 0.0
    p, g = predicted - predicted.mean(), gold - gold.mean()
    denominator = np.sqrt(np.sum(p * p) * np.sum(g * g))
    return float(np.sum(p * g) / denominator) if denominator else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(predicted: np.ndarray, gold: np.ndarray) -> float:
    """Spearman's rho (scipy.stats.spearmanr): Pearson's r of the ranks, ties sharing their mean rank."""
    return pearson(_ranks(predicted), _ranks(gold))


def task_metrics(kind: str, predicted: np.ndarray, gold: np.ndarray, classes: int = 0) -> dict[str, float]:
    """The metrics reported for a task kind; the first one is the one the best checkpoint is chosen by."""
    if kind == "regression":
        return {"pearson": pearson(predicted, gold), "spearman": spearman(predicted, gold)}
    metrics = {"accuracy": accuracy(predicted, gold)}
    if kind != "multiple-choice" and classes == 2:
        metrics.update(f1=f1(predicted, gold), mcc=matthews_correlation(predicted, gold))
    elif kind != "multiple-choice":
        metrics["macro_f1"] = macro_f1(predicted, gold, classes)
    return metrics
