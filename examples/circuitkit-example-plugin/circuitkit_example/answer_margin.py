"""The metric ``answer_margin``: how far the best correct answer is ahead of the best incorrect one.

Per example, ``max(logit of a correct answer) - max(logit of an incorrect answer)`` at the answer position
(the best correct answer's logit alone for an example without incorrect answers). Unlike ``logit_diff``,
which averages each side, it looks only at the strongest competitor: an example is "right" exactly when the
margin is positive.

It reads only the answer tokens' logits, and says so (``reads = ANSWER_LOGITS``): circuitkit then computes
only those columns of the unembedding, which keeps evaluating many circuits cheap on large vocabularies.
Choose it with ``task.metric=answer_margin``.
"""

from __future__ import annotations

import torch

from circuitkit.api import ANSWER_LOGITS, Batch, Metric


class AnswerMargin(Metric):
    reads = ANSWER_LOGITS

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        best_correct = logits.gather(1, batch.correct).masked_fill(~batch.correct_mask, float("-inf")).amax(1)
        if batch.incorrect.shape[1] == 0:
            return best_correct
        best_incorrect = logits.gather(1, batch.incorrect).masked_fill(~batch.incorrect_mask, float("-inf")).amax(1)
        return best_correct - torch.where(torch.isfinite(best_incorrect), best_incorrect, torch.zeros_like(best_incorrect))
