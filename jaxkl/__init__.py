"""jaxkl: the Kullback-Leibler divergence for JAX.

``jaxkl.kl_div`` and ``jaxkl.KLDivLoss`` reproduce PyTorch's API and values
without PyTorch's NaNs at zero probability, and run fast under XLA.
"""

from jaxkl._discrete import KLDivLoss
from jaxkl._discrete import kl_div
from jaxkl._version import __version__

__all__ = [
    "KLDivLoss",
    "__version__",
    "kl_div",
]
