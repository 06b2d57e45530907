"""An example circuitkit plugin.

- ``method=eap_corrupted``: edge attribution patching with the gradient taken at the corrupted input
  (or anywhere on the line from the corrupted to the clean input, ``method.alpha``);
- ``task=repeat_word``: say again a word the prompt repeats ``task.repeats`` times;
- ``task.metric=answer_margin``: the best correct answer's logit minus the best incorrect one's;
- ``intervention=halfway``: a removed edge carries the midpoint of its clean and corrupted outputs.

All are registered by :mod:`circuitkit_example.plugin` through the ``circuitkit`` entry-point group.
"""

__version__ = "0.1.0"
