"""Token F1 and exact match (SQuAD style), with a normalisation that suits Portuguese.

normalise(text):
  1. lower-case;
  2. strip accents (NFKD, drop combining marks): "Sé" → "se", "à" → "a";
  3. punctuation → spaces (so "10h-18h" gives "10h 18h");
  4. drop articles, Portuguese (o, a, os, as, um, uma, uns, umas) and English (a, an, the);
  5. split on whitespace.
"""

from __future__ import annotations

import statistics
import unicodedata
from collections import Counter

ARTICLES = {"o", "a", "os", "as", "um", "uma", "uns", "umas", "an", "the"}


def normalise_tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text)
    return [tok for tok in text.split() if tok not in ARTICLES]


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (1.0 when both are empty)."""
    pred, ref = normalise_tokens(prediction), normalise_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise_tokens(prediction) == normalise_tokens(reference))


def aggregate(values: list[float]) -> dict:
    # "inclusive" deciles interpolate linearly between data points, as numpy's default percentile does
    deciles = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "p10": deciles[0],
        "p90": deciles[-1],
        "min": min(values),
        "max": max(values),
    }
