r"""Closed-form KL divergences between two distributions.

Same-family forms are public (``kl_normal``, ..., 29 functions); pairs of
different families (Beta-Normal, Weibull-Gamma, ...) are reached through
``jaxkl.kl``, which dispatches on distribution objects.

Every function takes the parameters of :math:`P` and of :math:`Q` as plain
arrays and returns :math:`D_{\mathrm{KL}}(P \,\|\, Q)` elementwise over the
batch: the parameters broadcast against each other by NumPy's rules (the
trailing event dimensions of multivariate families excluded, which must match
exactly). All functions are pure, work under ``jit``, ``vmap``, ``grad`` and
``hessian``, and take float16/bfloat16 inputs, which are computed in float32
and returned in the input dtype.

Numerics. Every textbook formula that cancels (when :math:`P \approx Q`, or
when parameters are large) is rearranged into sums of non-negative terms
computed from *small* quantities (parameter differences, log-ratios via
``log1p``, :math:`x - \log(1 + x)` and :math:`e^u - 1 - u` by series near 0,
Stirling-series differences for Gamma/Beta/Dirichlet; see
:mod:`jaxkl._special`). Results are never negative, and
:math:`D_{\mathrm{KL}}(P \,\|\, P)` is exactly 0 for every family (also
for zero or subnormal scales and rates). Stated accuracy, tested against
50-digit mpmath on the rounded parameters over a grid spanning 1e-3 to 1e8
with equal, nearly equal (relative differences 1e-7 to 1e-1) and distant
pairs, for Gamma and Beta the full product grid
:math:`\{10^{-3}, 0.05, 1, 30, 10^3, 10^5, 10^8\}^4`
(``tests/test_closed_forms_precision.py``): relative error at most 1e-11
in float64, and 1e-4 in float32 (1e-3 for Beta and Dirichlet, whose float32
error grows like ``eps / min(concentration)`` when a tiny component sits
next to a large one and only the large one changes). The families added
with ``jaxkl.kl`` state their own bounds in their docstrings, each tested
against mpmath (``tests/test_closed_forms_<module>.py``): float64 within
1e-12 of mpmath for the location-scale families, Weibull, von Mises, the
low-rank normal, the continuous Bernoulli and the cross-family pairs
(Kumaraswamy-Beta by a fixed tanh-sinh rule, 5e-15 on its stated domain);
float32 within 5e-6 (von Mises 1e-4; the binomial with different counts
loses about ``n * eps`` when P is close to Q). Gradients are those of
the rearranged formulas (equal to the textbook ones, finite wherever the
value is).

Zero mass (the library-wide rule): a class has zero mass under :math:`P`
exactly when its probability, computed in the computation dtype (float32 for
16-bit inputs; XLA flushes subnormals to zero), is 0. Such a class
contributes exactly 0, with zero gradient, whatever :math:`Q` gives it (even
:math:`-\infty`); positive mass where :math:`Q` has none gives
:math:`+\infty`. So ``kl_categorical([0., -1000.], [0., -inf])`` is 0, as in
torch.distributions, TFP and distrax.

Subnormal parameters are read as 0 (XLA flushes them): a scale or rate below
``finfo.tiny`` behaves as a point mass (:math:`+\infty` against a proper
distribution, 0 against the same parameters); for the multivariate normals a
Cholesky factor or covariance with such a diagonal entry is degenerate, with
the same rule (0 against identical parameters, :math:`+\infty` otherwise);
so are zero or infinite Weibull parameters and an infinite von Mises
concentration. Infinite concentrations of Gamma, Beta and Dirichlet are
outside the families and give NaN.

Parameters outside the family's support (a negative scale, a non-positive
concentration) give NaN, as :mod:`jax.scipy.stats` does; this cannot be
checked at trace time.

Layout: ``_base`` (argument handling and shared helpers), one module per
family group (``normal``, ``discrete``, ``positive``, ``location_scale``),
``cross`` (pairs of different families), ``mixture`` (Gaussian mixtures),
``_registry`` (the table of pairs and ``register_kl``) and ``_adapters``
(NumPyro, Distrax and TFP objects read as families and parameters).
"""

from jaxkl._closed_forms.discrete import kl_bernoulli
from jaxkl._closed_forms.discrete import kl_bernoulli_probs
from jaxkl._closed_forms.discrete import kl_binomial
from jaxkl._closed_forms.discrete import kl_categorical
from jaxkl._closed_forms.discrete import kl_continuous_bernoulli
from jaxkl._closed_forms.discrete import kl_geometric
from jaxkl._closed_forms.discrete import kl_poisson
from jaxkl._closed_forms.location_scale import kl_cauchy
from jaxkl._closed_forms.location_scale import kl_gumbel
from jaxkl._closed_forms.location_scale import kl_half_normal
from jaxkl._closed_forms.location_scale import kl_log_normal
from jaxkl._closed_forms.location_scale import kl_pareto
from jaxkl._closed_forms.location_scale import kl_uniform
from jaxkl._closed_forms.mixture import GaussianMixture
from jaxkl._closed_forms.mixture import kl_gaussian_mixture
from jaxkl._closed_forms.normal import kl_multivariate_normal
from jaxkl._closed_forms.normal import kl_multivariate_normal_diag
from jaxkl._closed_forms.normal import kl_multivariate_normal_from_covariance
from jaxkl._closed_forms.normal import kl_multivariate_normal_low_rank
from jaxkl._closed_forms.normal import kl_normal
from jaxkl._closed_forms.normal import kl_normal_from_log_scale
from jaxkl._closed_forms.normal import kl_normal_from_log_variance
from jaxkl._closed_forms.positive import kl_beta
from jaxkl._closed_forms.positive import kl_chi2
from jaxkl._closed_forms.positive import kl_dirichlet
from jaxkl._closed_forms.positive import kl_exponential
from jaxkl._closed_forms.positive import kl_gamma
from jaxkl._closed_forms.positive import kl_laplace
from jaxkl._closed_forms.positive import kl_von_mises
from jaxkl._closed_forms.positive import kl_weibull

__all__ = [
  "GaussianMixture",
  "kl_bernoulli",
  "kl_bernoulli_probs",
  "kl_beta",
  "kl_binomial",
  "kl_categorical",
  "kl_cauchy",
  "kl_chi2",
  "kl_continuous_bernoulli",
  "kl_dirichlet",
  "kl_exponential",
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
  "kl_poisson",
  "kl_uniform",
  "kl_von_mises",
  "kl_weibull",
]
