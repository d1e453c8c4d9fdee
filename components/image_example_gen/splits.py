"""The label split rule: which labels go to eval, decided per label, plus a small-data guard.

Plain Python (no TFX, no Beam). One rule, in two shapes that give the same answer:

* ``assign_splits(labels, ...)``: the whole set at once (tests, the CLI, small data);
* ``LabelTally`` + ``SplitRule``: what ingestion uses at scale. Each label's side comes from
  its own hash; the only global facts the guard needs (how many labels, how many hashed to
  eval, the lowest and highest ``(bucket, label)``) are a fixed-size tally that merges
  associatively, so a Beam combiner computes it without ever holding the set of labels
  (GLDv2 has 200,000 of them).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable, Optional, Sequence

TRAIN, EVAL = "train", "eval"
SPLITS = (TRAIN, EVAL)
HASH_BUCKETS = 1000


def label_bucket(label: str, salt: str) -> int:
    """The label's hash bucket in [0, 1000): sha256 of salt and label, stable everywhere."""
    digest = hashlib.sha256(f"{salt}\x00{label}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HASH_BUCKETS


def eval_threshold(eval_fraction: float) -> int:
    """Buckets below this go to eval. Raises ValueError unless 0 < eval_fraction < 1."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be strictly between 0 and 1, got {eval_fraction}")
    return round(eval_fraction * HASH_BUCKETS)


def hash_split(label: str, salt: str, threshold: int) -> str:
    """The label's side by its hash alone: ``EVAL`` when its bucket is below ``threshold``.

    Every label but the guard's one exception ends up here (``SplitRule.split_of``), so
    ingestion writes each example to this side as it goes and moves one label afterwards
    if the guard asks for it (``guard_move``)."""
    return EVAL if label_bucket(label, salt) < threshold else TRAIN


@dataclasses.dataclass(frozen=True)
class LabelTally:
    """What the guard needs to know about a set of DISTINCT labels, in constant space.

    ``lowest`` / ``highest``: the smallest and largest ``(bucket, label)``; ``n_eval``: how
    many labels the plain hash rule puts in eval.
    """
    n: int = 0
    n_eval: int = 0
    lowest: Optional[tuple[int, str]] = None
    highest: Optional[tuple[int, str]] = None

    @staticmethod
    def of(label: str, salt: str, threshold: int) -> "LabelTally":
        key = (label_bucket(label, salt), label)
        return LabelTally(1, int(key[0] < threshold), key, key)

    def merge(self, other: "LabelTally") -> "LabelTally":
        keys = [k for k in (self.lowest, self.highest, other.lowest, other.highest) if k is not None]
        return LabelTally(self.n + other.n, self.n_eval + other.n_eval,
                          min(keys) if keys else None, max(keys) if keys else None)


@dataclasses.dataclass(frozen=True)
class SplitRule:
    """The split of every label, from the salt, the threshold and the guard's one exception.

    The rule: a label goes to eval when ``label_bucket(label, salt) < threshold``
    (``round(eval_fraction * 1000)``). So the eval share of LABELS is about ``eval_fraction``,
    and a label's side depends only on (salt, label): adding labels never moves an existing
    one, except via the guard. The guard, for data sets so small that the hash puts every
    label on one side: with at least two labels, if eval got none, the label with the
    smallest (bucket, label) moves to eval; if train got none, the label with the largest
    (bucket, label) moves to train. Those are the labels closest to the threshold, so the
    guard bends the rule as little as possible. A single label always goes to train (there
    is nothing unseen to evaluate on).
    """
    salt: str
    threshold: int
    moved: Optional[str] = None      # the one label the guard moves, if any
    moved_to: Optional[str] = None
    labels: tuple[int, int] = (0, 0)  # labels per split (train, eval), after the guard

    @staticmethod
    def from_tally(tally: LabelTally, salt: str, threshold: int) -> "SplitRule":
        n_train, n_eval = tally.n - tally.n_eval, tally.n_eval
        moved = moved_to = None
        if tally.n == 1 and n_eval == 1:
            moved, moved_to = tally.lowest[1], TRAIN
        elif tally.n >= 2 and n_eval == 0:
            moved, moved_to = tally.lowest[1], EVAL
        elif tally.n >= 2 and n_train == 0:
            moved, moved_to = tally.highest[1], TRAIN
        if moved_to == EVAL:
            n_train, n_eval = n_train - 1, n_eval + 1
        elif moved_to == TRAIN:
            n_train, n_eval = n_train + 1, n_eval - 1
        return SplitRule(salt, threshold, moved, moved_to, (n_train, n_eval))

    def split_of(self, label: str) -> str:
        if label == self.moved:
            return self.moved_to
        return hash_split(label, self.salt, self.threshold)

    def moved_from(self) -> Optional[str]:
        """The side the guard's label hashed to (where ingestion first wrote it), or None."""
        return None if self.moved is None else hash_split(self.moved, self.salt, self.threshold)

    def label_counts(self) -> dict[str, int]:
        return dict(zip(SPLITS, self.labels))


def assign_splits(labels: Iterable[str], eval_fraction: float, salt: str) -> dict[str, str]:
    """Maps each label to ``train`` or ``eval`` by ``SplitRule``: whole labels, never both.

    Args:
      labels: the labels that have at least one accepted example (duplicates are ignored).
      eval_fraction: share of labels held out, strictly between 0 and 1.
      salt: mixed into the hash; another salt gives another (equally valid) split.

    Returns:
      {label: "train" | "eval"}.
    """
    threshold = eval_threshold(eval_fraction)
    distinct = set(labels)
    tally = LabelTally()
    for label in distinct:
        tally = tally.merge(LabelTally.of(label, salt, threshold))
    rule = SplitRule.from_tally(tally, salt, threshold)
    return {label: rule.split_of(label) for label in distinct}


def split_counts(assignment: dict[str, str], splits: Sequence[str] = SPLITS) -> dict[str, int]:
    """Number of labels per split."""
    return {s: sum(1 for v in assignment.values() if v == s) for s in splits}
