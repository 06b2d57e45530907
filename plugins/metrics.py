"""The builtin task metrics, registered like any plugin's (``task.metric=NAME``).

- ``logit_diff``: mean logit of the correct answers minus mean logit of the incorrect ones (reads the
  answer tokens' logits only);
- ``prob_diff``: summed probability of the correct answers minus that of the incorrect ones (reads the
  answer tokens' probabilities);
- ``logit``: mean logit of the correct answers (answer logits);
- ``logprob``: log of the summed probability of the correct answers (answer probabilities);
- ``kl``: ``-KL(p_clean || q)``, which needs the model: methods bind it
  (:func:`circuitkit.objectives.bind_objective`).
"""

from circuitkit.api import CorrectLogit, CorrectLogprob, LogitDiff, ProbDiff, UnboundKL, hookimpl


@hookimpl
def circuitkit_register_metrics(registry):  # noqa: ANN001, ANN201
    registry.add("logit_diff", LogitDiff)
    registry.add("prob_diff", ProbDiff)
    registry.add("logit", CorrectLogit)
    registry.add("logprob", CorrectLogprob)
    registry.add("kl", UnboundKL)
