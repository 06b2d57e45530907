"""The builtin interventions, registered like any plugin's (``intervention=NAME``): what a removed edge
(or ablated node or neuron) carries in attribution and evaluation.

- ``patching`` (the default): the source's output on the corrupted prompt;
- ``zero``: zero (a head's output including its share of the attention output bias);
- ``mean``: the source's mean output over the run's clean prompts, averaged over positions;
- ``mean_positional``: the same mean at each position.

See :class:`circuitkit.api.Intervention`.
"""

from circuitkit.api import Intervention, MeanAblation, PositionalMeanAblation, ZeroAblation, hookimpl


@hookimpl
def circuitkit_register_interventions(registry):  # noqa: ANN001, ANN201
    # In this order: the order of the choices in messages and --help.
    registry.add("patching", Intervention)
    registry.add("zero", ZeroAblation)
    registry.add("mean", MeanAblation)
    registry.add("mean_positional", PositionalMeanAblation)
