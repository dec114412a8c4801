"""KL for RL fine-tuning of language models.

One module per concept:

* ``penalty``: per-token penalties from the log-probabilities of sampled
  tokens (k1, abs, k2, k3 and verl's aliases, straight-through gradients,
  importance-sampling correction, clipping before ``exp``);
* ``sequence``: the exact per-token KL from full logits, and the
  Rao-Blackwellized sequence-level KL with its gradient estimator;
* ``aggregation``: verl's loss-aggregation modes with global normalizers and
  packed sequences;
* ``controllers``: fixed and adaptive (Ziegler et al., 2019) KL coefficients
  as pure ``init``/``update`` functions.
"""
