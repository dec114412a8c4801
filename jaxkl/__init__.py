"""jaxkl: the Kullback-Leibler divergence for JAX.

* ``kl_div`` / ``KLDivLoss``: PyTorch's API and values, without PyTorch's NaNs
  at zero probability, fast under XLA.
* ``kl_divergence``: per-example KL over an axis (optax-compatible), with masks.
* ``kl_divergence_from_logits``, ``jensen_shannon_from_logits``,
  ``divergence_from_logits``, ``distillation_loss``: divergences straight from
  logits with temperature, for knowledge distillation (every framework's
  convention: temperatures, T^2, hard-label term, soft-caps, reductions).
* ``topk_divergence_from_logits``, ``topk_distillation_loss``,
  ``topk_metrics``: distillation from a teacher's top-k log-probabilities.
* ``fused_linear_distillation_loss``, ``fused_linear_topk_distillation_loss``:
  the same losses from hidden states and LM heads, never materializing logits.
* ``reduce_loss``: the reductions shared by every loss, with masks.
* ``kl``: the KL between two distribution objects (NumPyro, Distrax,
  TFP-on-JAX): a closed form when one is registered, else Monte Carlo with a
  key; ``register_kl`` for your own pairs.
* ``kl_normal``, ``kl_multivariate_normal``, ``kl_categorical``, ``kl_gamma``,
  ...: closed-form KL from parameters (same family; ``kl`` also knows
  cross-family pairs). ``GaussianMixture``, ``kl_gaussian_mixture``: the
  variational approximation, bounds or Monte Carlo for Gaussian mixtures.
* ``kl_from_samples``, ``kl_estimator_terms``, ``monte_carlo_kl``: Monte-Carlo
  KL (k1/k2/k3 estimators, standard errors, gradients, variance reduction).
* ``kl_penalty``, ``kl_penalty_from_logits``, ``sequence_kl``,
  ``aggregate_loss``, ``fixed_kl_controller``, ``adaptive_kl_controller``:
  KL in RL fine-tuning of language models (per-token penalties, the exact and
  Rao-Blackwellized sequence KL, verl's aggregation modes, KL controllers).
* ``vocab_parallel_kl_from_logits``, ``sharded_monte_carlo_kl``: explicit SPMD
  forms for ``jax.shard_map`` (class axis or samples split over devices).
"""

from jaxkl._closed_forms import GaussianMixture
from jaxkl._closed_forms import kl_bernoulli
from jaxkl._closed_forms import kl_bernoulli_probs
from jaxkl._closed_forms import kl_beta
from jaxkl._closed_forms import kl_binomial
from jaxkl._closed_forms import kl_categorical
from jaxkl._closed_forms import kl_cauchy
from jaxkl._closed_forms import kl_chi2
from jaxkl._closed_forms import kl_continuous_bernoulli
from jaxkl._closed_forms import kl_dirichlet
from jaxkl._closed_forms import kl_exponential
from jaxkl._closed_forms import kl_gamma
from jaxkl._closed_forms import kl_gaussian_mixture
from jaxkl._closed_forms import kl_geometric
from jaxkl._closed_forms import kl_gumbel
from jaxkl._closed_forms import kl_half_normal
from jaxkl._closed_forms import kl_laplace
from jaxkl._closed_forms import kl_log_normal
from jaxkl._closed_forms import kl_multivariate_normal
from jaxkl._closed_forms import kl_multivariate_normal_diag
from jaxkl._closed_forms import kl_multivariate_normal_from_covariance
from jaxkl._closed_forms import kl_multivariate_normal_low_rank
from jaxkl._closed_forms import kl_normal
from jaxkl._closed_forms import kl_normal_from_log_scale
from jaxkl._closed_forms import kl_normal_from_log_variance
from jaxkl._closed_forms import kl_pareto
from jaxkl._closed_forms import kl_poisson
from jaxkl._closed_forms import kl_uniform
from jaxkl._closed_forms import kl_von_mises
from jaxkl._closed_forms import kl_weibull
from jaxkl._closed_forms._adapters import as_gaussian_mixture
from jaxkl._closed_forms._registry import register_kl
from jaxkl._discrete import KLDivLoss
from jaxkl._discrete import kl_div
from jaxkl._distillation import distillation_loss
from jaxkl._distillation import topk_distillation_loss
from jaxkl._estimators import kl_estimator_terms
from jaxkl._estimators import kl_from_samples
from jaxkl._fused_linear import fused_linear_distillation_loss
from jaxkl._fused_topk import fused_linear_topk_distillation_loss
from jaxkl._kl import kl
from jaxkl._knn import knn_kl
from jaxkl._knn_ensemble import knn_kl_estimate
from jaxkl._logits import divergence_from_logits
from jaxkl._logits import jensen_shannon_from_logits
from jaxkl._logits import kl_divergence_from_logits
from jaxkl._monte_carlo import KLEstimate
from jaxkl._monte_carlo import StandardNormalPushforward
from jaxkl._monte_carlo import monte_carlo_kl
from jaxkl._per_example import kl_divergence
from jaxkl._reduction import reduce_loss
from jaxkl._rl.aggregation import aggregate_loss
from jaxkl._rl.controllers import KLController
from jaxkl._rl.controllers import KLControllerState
from jaxkl._rl.controllers import adaptive_kl_controller
from jaxkl._rl.controllers import fixed_kl_controller
from jaxkl._rl.penalty import kl_penalty
from jaxkl._rl.sequence import kl_penalty_from_logits
from jaxkl._rl.sequence import sequence_kl
from jaxkl._sharded import sharded_monte_carlo_kl
from jaxkl._sharded import vocab_parallel_kl_from_logits
from jaxkl._topk import TopKMetrics
from jaxkl._topk import topk_divergence_from_logits
from jaxkl._topk import topk_metrics
from jaxkl._version import __version__

__all__ = [
  "GaussianMixture",
  "KLController",
  "KLControllerState",
  "KLDivLoss",
  "KLEstimate",
  "StandardNormalPushforward",
  "TopKMetrics",
  "__version__",
  "adaptive_kl_controller",
  "aggregate_loss",
  "as_gaussian_mixture",
  "distillation_loss",
  "divergence_from_logits",
  "fixed_kl_controller",
  "fused_linear_distillation_loss",
  "fused_linear_topk_distillation_loss",
  "jensen_shannon_from_logits",
  "kl",
  "kl_bernoulli",
  "kl_bernoulli_probs",
  "kl_beta",
  "kl_binomial",
  "kl_categorical",
  "kl_cauchy",
  "kl_chi2",
  "kl_continuous_bernoulli",
  "kl_dirichlet",
  "kl_div",
  "kl_divergence",
  "kl_divergence_from_logits",
  "kl_estimator_terms",
  "kl_exponential",
  "kl_from_samples",
  "kl_gamma",
  "kl_gaussian_mixture",
  "kl_geometric",
  "kl_gumbel",
  "kl_half_normal",
  "kl_laplace",
  "kl_log_normal",
  "kl_multivariate_normal",
  "kl_multivariate_normal_diag",
  "kl_multivariate_normal_from_covariance",
  "kl_multivariate_normal_low_rank",
  "kl_normal",
  "kl_normal_from_log_scale",
  "kl_normal_from_log_variance",
  "kl_pareto",
  "kl_penalty",
  "kl_penalty_from_logits",
  "kl_poisson",
  "kl_uniform",
  "kl_von_mises",
  "kl_weibull",
  "knn_kl",
  "knn_kl_estimate",
  "monte_carlo_kl",
  "reduce_loss",
  "register_kl",
  "sequence_kl",
  "sharded_monte_carlo_kl",
  "topk_distillation_loss",
  "topk_divergence_from_logits",
  "topk_metrics",
  "vocab_parallel_kl_from_logits",
]
