"""jaxkl: the Kullback-Leibler divergence for JAX.

* ``kl_div`` / ``KLDivLoss``: PyTorch's API and values, without PyTorch's NaNs
  at zero probability, fast under XLA.
* ``kl_divergence``: per-example KL over an axis (optax-compatible), with masks.
* ``kl_divergence_from_logits``, ``jensen_shannon_from_logits``,
  ``divergence_from_logits``, ``distillation_loss``: divergences straight from
  logits with temperature, for knowledge distillation.
* ``reduce_loss``: the reductions shared by every loss, with masks.
"""

from jaxkl._discrete import KLDivLoss
from jaxkl._discrete import kl_div
from jaxkl._logits import distillation_loss
from jaxkl._logits import divergence_from_logits
from jaxkl._logits import jensen_shannon_from_logits
from jaxkl._logits import kl_divergence_from_logits
from jaxkl._per_example import kl_divergence
from jaxkl._reduction import reduce_loss
from jaxkl._version import __version__

__all__ = [
    "KLDivLoss",
    "__version__",
    "distillation_loss",
    "divergence_from_logits",
    "jensen_shannon_from_logits",
    "kl_div",
    "kl_divergence",
    "kl_divergence_from_logits",
    "reduce_loss",
]
