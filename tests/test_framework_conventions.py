"""Each row of docs/conventions.md, checked against that framework's formula.

Every reference below is written here, in float64 NumPy, from the formula the
framework documents and implements (the source file is named in each
docstring and in docs/conventions.md); none is copied code. Each test feeds
the same small random logits to the reference and to the jaxkl call that the
table gives for that framework, and asserts equal values.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import jaxkl

pytestmark = pytest.mark.usefixtures("x64")

B, T, V, K = 2, 5, 11, 4
RTOL = 1e-10
ATOL = 1e-12


# -- shared float64 pieces (plain math, no framework semantics) ---------------


def _log_softmax(x):
  return x - logsumexp(x, axis=-1, keepdims=True)


def _kl(log_a, log_b):
  """Per-row KL(A || B) from log-probabilities; 0 log 0 = 0."""
  a = np.exp(log_a)
  with np.errstate(invalid="ignore"):
    terms = a * (log_a - log_b)
  return np.where(a > 0, terms, 0.0).sum(-1)


def _entropy(log_a):
  a = np.exp(log_a)
  return -np.where(a > 0, a * log_a, 0.0).sum(-1)


def _cross_entropy(logits, labels):
  """-log softmax(logits)[label] per token (labels must be valid indices)."""
  log_q = _log_softmax(logits)
  return -np.take_along_axis(log_q, labels[..., None], axis=-1)[..., 0]


def _data(seed, shape=(B, T, V), scale=2.0):
  rng = np.random.default_rng(seed)
  student = scale * rng.standard_normal(shape)
  teacher = scale * rng.standard_normal(shape)
  labels = rng.integers(0, shape[-1], shape[:-1])
  labels[0, -2:] = -100  # prompt / padding tokens
  labels[1, 0] = -100
  return student, teacher, labels


def _topk(logits, k):
  """Indices of the k largest logits per row, [..., k]."""
  return np.argsort(-logits, axis=-1)[..., :k]


def _close(actual, expected):
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=RTOL, atol=ATOL)


# -- TRL ------------------------------------------------------------------------


def _trl_generalized_jsd(
  student,
  teacher,
  labels=None,
  *,
  beta,
  temperature=1.0,
  reduction="batchmean",
  num_items_in_batch=None,
):
  """TRL's generalized JSD loss (trl/experimental/gkd/gkd_trainer.py,
  ``GKDTrainer.generalized_jsd_loss``; the same formula in
  trl/experimental/distillation/distillation_trainer.py, ``_jsd_divergence``
  and ``_reduce_divergence_loss``).

  Both logits divided by T; teacher P, student Q; beta = 0: KL(P || Q),
  beta = 1: KL(Q || P), else beta KL(P || M) + (1 - beta) KL(Q || M) with
  M = beta P + (1 - beta) Q. No T^2. The element-wise divergence is reduced
  over the kept tokens (labels != -100): 'batchmean' divides the sum by the
  number of kept tokens (by the batch size when there are no labels),
  ``num_items_in_batch`` replaces that denominator.
  """
  log_q = _log_softmax(student / temperature)
  log_p = _log_softmax(teacher / temperature)
  if beta == 0:
    per_token = _kl(log_p, log_q)
  elif beta == 1:
    per_token = _kl(log_q, log_p)
  else:
    log_m = np.logaddexp(log_p + np.log(beta), log_q + np.log1p(-beta))
    per_token = beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
  if labels is not None:
    keep = labels != -100
    per_token = per_token[keep]
  if num_items_in_batch is not None:
    return per_token.sum() / num_items_in_batch
  assert reduction == "batchmean"
  if labels is not None:
    return per_token.sum() / max(keep.sum(), 1)
  return per_token.sum() / max(per_token.shape[0], 1)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_trl_gkd_generalized_jsd(beta, temperature):
  student, teacher, labels = _data(0)
  expected = _trl_generalized_jsd(
    student, teacher, labels, beta=beta, temperature=temperature
  )
  loss = jaxkl.distillation_loss(
    jnp.asarray(student),
    jnp.asarray(teacher),
    divergence="jsd",
    beta=beta,
    temperature=temperature,
    temperature_scaling="none",
    labels=jnp.asarray(labels),
  )
  _close(loss, expected)


def test_trl_gkd_without_labels_is_batchmean():
  # Without labels TRL divides by the batch size (the leading axis).
  student, teacher, _ = _data(1)
  expected = _trl_generalized_jsd(student, teacher, beta=0.5, temperature=2.0)
  loss = jaxkl.distillation_loss(
    jnp.asarray(student),
    jnp.asarray(teacher),
    divergence="jsd",
    beta=0.5,
    temperature=2.0,
    temperature_scaling="none",
    reduction="batchmean",
  )
  _close(loss, expected)


def test_trl_num_items_in_batch_micro_batches_add_up():
  # TRL divides the summed divergence by the global token count; jaxkl's
  # num_items_in_batch does the same, so micro-batch losses add up.
  student, teacher, labels = _data(2)
  total = int((labels != -100).sum())
  parts = []
  for row in range(B):
    sl = slice(row, row + 1)
    expected = _trl_generalized_jsd(
      student[sl], teacher[sl], labels[sl], beta=0.3, num_items_in_batch=total
    )
    loss = jaxkl.distillation_loss(
      jnp.asarray(student[sl]),
      jnp.asarray(teacher[sl]),
      divergence="jsd",
      beta=0.3,
      temperature_scaling="none",
      labels=jnp.asarray(labels[sl]),
      num_items_in_batch=total,
    )
    _close(loss, expected)
    parts.append(float(loss))
  full = _trl_generalized_jsd(student, teacher, labels, beta=0.3)
  np.testing.assert_allclose(sum(parts), full, rtol=RTOL)


def test_trl_distillation_trainer_completion_mask():
  # DistillationTrainer: beta defaults to 1.0 (reverse KL), the temperature
  # divides both models' logits, the mask is the completion mask.
  student, teacher, labels = _data(3)
  completion_mask = labels != -100
  expected = _trl_generalized_jsd(
    student,
    teacher,
    np.where(completion_mask, 0, -100),
    beta=1.0,
    temperature=0.7,
  )
  loss = jaxkl.distillation_loss(
    jnp.asarray(student),
    jnp.asarray(teacher),
    divergence="jsd",
    beta=1.0,
    temperature=0.7,
    temperature_scaling="none",
    where=jnp.asarray(completion_mask),
  )
  _close(loss, expected)


def _trl_server_sparse(student_log_probs, support, teacher_lp, valid, *, beta, tail):
  """TRL's server (top-k log-probabilities) loss
  (trl/experimental/server_distillation/server_distillation_trainer.py,
  ``_compute_server_forward_kl_loss``, ``_compute_sparse_top_1_divergence_loss``,
  ``_add_tail_bucket``), per token.

  The student's full-vocabulary log-probabilities are gathered at the support;
  with the tail, both get one more outcome log(1 - sum of the listed
  probabilities); without it both are renormalized over the support. Invalid
  slots carry no mass.
  """
  log_q = np.take_along_axis(student_log_probs, support, axis=-1)
  log_q = np.where(valid, log_q, -np.inf)
  log_p = np.where(valid, teacher_lp, -np.inf)
  if tail:
    log_q = np.concatenate(
      [log_q, np.log1p(-np.exp(logsumexp(log_q, -1, keepdims=True)))], -1
    )
    log_p = np.concatenate(
      [log_p, np.log1p(-np.exp(logsumexp(log_p, -1, keepdims=True)))], -1
    )
  else:
    log_q = log_q - logsumexp(log_q, -1, keepdims=True)
    log_p = log_p - logsumexp(log_p, -1, keepdims=True)
  if beta == 0:
    return _kl(log_p, log_q)
  if beta == 1:
    return _kl(log_q, log_p)
  with np.errstate(divide="ignore"):
    log_m = np.log(beta * np.exp(log_p) + (1 - beta) * np.exp(log_q))
  return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_trl_server_forward_topk(tail):
  # beta = 0, loss_top_k = K: the teacher server returns its top-K
  # log-probabilities at the loss temperature; the student's logits are
  # divided by that temperature. loss_add_tail=True (default) is jaxkl's
  # tail='bucket', False is tail='renormalize'.
  temperature = 1.5
  student, teacher, labels = _data(4)
  teacher_lp_full = _log_softmax(teacher / temperature)
  idx = _topk(teacher, K)
  teacher_lp = np.take_along_axis(teacher_lp_full, idx, axis=-1)
  teacher_lp[0, 1, -1] = -np.inf  # the server returned fewer than K here
  valid = np.isfinite(teacher_lp)
  per_token = _trl_server_sparse(
    _log_softmax(student / temperature),
    idx,
    teacher_lp,
    valid,
    beta=0.0,
    tail=tail == "bucket",
  )
  keep = labels != -100
  expected = per_token[keep].sum() / keep.sum()
  loss = jaxkl.topk_distillation_loss(
    jnp.asarray(student),
    jnp.asarray(idx),
    jnp.asarray(teacher_lp),
    divergence="forward",
    tail=tail,
    student_temperature=temperature,
    temperature_scaling="none",
    labels=jnp.asarray(labels),
  )
  _close(loss, expected)


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_trl_server_top1_mixed(beta):
  # beta > 0 (loss_top_k = 1): support = {teacher's top-1, sampled token}
  # (the second dropped when equal; only the sampled token for beta = 1), with
  # the tail. In jaxkl: those indices, an unused slot marked by a -inf
  # log-probability, tail='bucket'.
  student, teacher, labels = _data(5)
  teacher_lp_full = _log_softmax(teacher)
  top1 = _topk(teacher, 1)
  sampled = np.random.default_rng(6).integers(0, V, (B, T, 1))
  sampled[0, 0, 0] = top1[0, 0, 0]  # the sampled token is the top-1
  if beta == 1.0:
    support = sampled
    valid = np.ones_like(support, dtype=bool)
  else:
    support = np.concatenate([top1, sampled], -1)
    valid = np.stack(
      [np.ones_like(top1[..., 0], bool), top1[..., 0] != sampled[..., 0]], -1
    )
  teacher_lp = np.take_along_axis(teacher_lp_full, support, axis=-1)
  per_token = _trl_server_sparse(
    _log_softmax(student), support, teacher_lp, valid, beta=beta, tail=True
  )
  keep = labels != -100
  expected = per_token[keep].sum() / keep.sum()
  loss = jaxkl.topk_distillation_loss(
    jnp.asarray(student),
    jnp.asarray(support),
    jnp.asarray(np.where(valid, teacher_lp, -np.inf)),
    divergence="jsd",
    beta=beta,
    tail="bucket",
    temperature_scaling="none",
    labels=jnp.asarray(labels),
  )
  _close(loss, expected)


# -- Liger-Kernel ----------------------------------------------------------------


def _liger_jsd(log_q, log_p, *, beta):
  """Liger's generalized JSD per row (src/liger_kernel/ops/jsd.py, the
  kernel's loss; src/liger_kernel/chunked_loss/jsd_loss.py,
  ``distillation_loss_fn``): X = log Q (student), Y = log P (teacher),
  beta = 0: KL(P || Q), beta = 1: KL(Q || P), else
  beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q."""
  if beta == 0:
    return _kl(log_p, log_q)
  if beta == 1:
    return _kl(log_q, log_p)
  log_m = np.logaddexp(log_p + np.log(beta), log_q + np.log1p(-beta))
  return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


def _liger_fused_linear_jsd_loss(
  h_s, w_s, h_t, w_t, labels, *, weight_hard, weight_soft, beta, temperature
):
  """``LigerFusedLinearJSDLoss`` (src/liger_kernel/chunked_loss/jsd_loss.py on
  ``LigerFusedLinearDistillationBase._compute_loss`` in
  src/liger_kernel/chunked_loss/fused_linear_distillation.py).

  Weights are [V, H] (torch.nn.Linear). Hard loss: the summed cross-entropy
  of the student's logits at T = 1 over the non-ignored labels; soft loss:
  the summed JSD of both logits divided by T over the non-ignored tokens;
  both divided by the number of non-ignored labels (at least 1), then
  weight_hard * hard + weight_soft * soft. No T^2.
  """
  s = h_s @ w_s.T
  t = h_t @ w_t.T
  keep = labels != -100
  n = max(keep.sum(), 1)
  ce = _cross_entropy(s, np.where(keep, labels, 0))
  hard = np.where(keep, ce, 0.0).sum() / n
  jsd = _liger_jsd(
    _log_softmax(s / temperature), _log_softmax(t / temperature), beta=beta
  )
  soft = np.where(keep, jsd, 0.0).sum() / n
  return weight_hard * hard + weight_soft * soft


@pytest.mark.parametrize(
  ("weight_hard", "weight_soft", "beta"),
  [(0.5, 0.5, 0.5), (0.0, 1.0, 0.1), (0.3, 0.9, 1.0)],
)
def test_liger_fused_linear_jsd_loss(weight_hard, weight_soft, beta):
  rng = np.random.default_rng(7)
  n, h_dim = B * T, 6
  h_s, h_t = rng.standard_normal((n, h_dim)), rng.standard_normal((n, h_dim))
  w_s, w_t = rng.standard_normal((V, h_dim)), rng.standard_normal((V, h_dim))
  labels = rng.integers(0, V, n)
  labels[[1, 6]] = -100
  temperature = 2.0
  expected = _liger_fused_linear_jsd_loss(
    h_s,
    w_s,
    h_t,
    w_t,
    labels,
    weight_hard=weight_hard,
    weight_soft=weight_soft,
    beta=beta,
    temperature=temperature,
  )
  total = weight_hard + weight_soft
  kwargs = dict(
    divergence="jsd",
    beta=beta,
    temperature=temperature,
    temperature_scaling="none",
    hard_loss_weight=weight_hard / total,
    labels=jnp.asarray(labels),
  )
  dense = jaxkl.distillation_loss(
    jnp.asarray(h_s @ w_s.T), jnp.asarray(h_t @ w_t.T), **kwargs
  )
  _close(total * dense, expected)
  fused = jaxkl.fused_linear_distillation_loss(
    jnp.asarray(h_s),
    jnp.asarray(w_s.T),
    jnp.asarray(h_t),
    jnp.asarray(w_t.T),
    **kwargs,
  )
  _close(total * fused, expected)


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_liger_jsd(beta):
  # LigerJSD(log_q, log_p, shift_labels): inputs are log-probabilities (valid
  # logits), the sum over non-ignored rows divided by their number.
  student, teacher, labels = (x.reshape(B * T, -1) for x in _data(8))
  labels = labels.reshape(-1)
  log_q, log_p = _log_softmax(student), _log_softmax(teacher)
  keep = labels != -100
  expected = np.where(keep, _liger_jsd(log_q, log_p, beta=beta), 0.0).sum() / keep.sum()
  loss = jaxkl.distillation_loss(
    jnp.asarray(log_q),
    jnp.asarray(log_p),
    divergence="jsd",
    beta=beta,
    temperature_scaling="none",
    labels=jnp.asarray(labels),
  )
  _close(loss, expected)


# -- MaxText ---------------------------------------------------------------------


def _maxtext_combined(
  student, teacher, targets, segmentation, *, pad_id, alpha, temperature, top_k=None
):
  """MaxText's ``CombinedDistillationStrategy.compute_loss`` (logit part;
  src/maxtext/trainers/post_train/distillation/distillation_utils.py).

  Token mask: target != pad_id and segmentation != 0 (``create_labels``).
  Soft: forward KL(teacher_T || student_T), both logits divided by T, times
  T^2, summed over kept tokens / their number (at least 1). Hard: the
  student's cross-entropy at T = 1, same normalizer. Loss:
  alpha * soft + (1 - alpha) * hard. With ``top_k = (indices, logits)``
  (offline teacher): both softmaxes are taken over the K listed classes only.
  """
  mask = (targets != pad_id) & (segmentation != 0)
  count = max(mask.sum(), 1)
  if top_k is None:
    kl = _kl(_log_softmax(teacher / temperature), _log_softmax(student / temperature))
  else:
    idx, t_k = top_k
    s_k = np.take_along_axis(student, idx, axis=-1)
    kl = _kl(_log_softmax(t_k / temperature), _log_softmax(s_k / temperature))
  soft = temperature**2 * np.where(mask, kl, 0.0).sum() / count
  hard = np.where(mask, _cross_entropy(student, targets), 0.0).sum() / count
  return alpha * soft + (1 - alpha) * hard


def _maxtext_data(seed):
  student, teacher, _ = _data(seed)
  rng = np.random.default_rng(seed + 100)
  targets = rng.integers(0, V, (B, T))
  targets[0, -2:] = 0  # pad_id = 0
  segmentation = np.ones((B, T), np.int32)
  segmentation[1, -1] = 0
  return student, teacher, targets, segmentation


@pytest.mark.parametrize(("alpha", "temperature"), [(0.5, 1.0), (0.8, 2.0), (1.0, 3.0)])
def test_maxtext_dense(alpha, temperature):
  student, teacher, targets, segmentation = _maxtext_data(9)
  expected = _maxtext_combined(
    student,
    teacher,
    targets,
    segmentation,
    pad_id=0,
    alpha=alpha,
    temperature=temperature,
  )
  loss = jaxkl.distillation_loss(
    jnp.asarray(student),
    jnp.asarray(teacher),
    temperature=temperature,
    hard_loss_weight=1.0 - alpha,
    labels=jnp.asarray(targets),
    ignore_index=0,
    where=jnp.asarray(segmentation != 0),
  )
  _close(loss, expected)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_maxtext_offline_topk_renormalize(alpha):
  # Offline mode stores the teacher's top-K raw logits and indices
  # (save_top_k_teacher_logits.py). Renormalized over the K classes the
  # teacher's normalizer cancels: the top-K log-sum-exp stands in for it.
  temperature = 2.0
  student, teacher, targets, segmentation = _maxtext_data(10)
  idx = _topk(teacher, K)
  t_k = np.take_along_axis(teacher, idx, axis=-1)
  expected = _maxtext_combined(
    student,
    teacher,
    targets,
    segmentation,
    pad_id=0,
    alpha=alpha,
    temperature=temperature,
    top_k=(idx, t_k),
  )
  loss = jaxkl.topk_distillation_loss(
    jnp.asarray(student),
    jnp.asarray(idx),
    None,
    teacher_logits=jnp.asarray(t_k),
    teacher_log_normalizer=jnp.asarray(logsumexp(t_k / temperature, axis=-1)),
    divergence="forward",
    tail="renormalize",
    temperature=temperature,
    hard_loss_weight=1.0 - alpha,
    labels=jnp.asarray(targets),
    ignore_index=0,
    where=jnp.asarray(segmentation != 0),
  )
  _close(loss, expected)


# -- Tunix -----------------------------------------------------------------------


def _tunix_logit_strategy(student, teacher, labels, *, alpha, temperature, top_k=0):
  """Tunix's ``LogitStrategy.compute_loss`` (tunix/distillation/strategies/logit.py).

  Soft: forward KL(teacher_T || student_T) times T^2, averaged over every
  position (no token mask); with ``top_k > 0`` both softmaxes are over the
  teacher's top-k classes only (``jax.lax.top_k`` of the teacher's logits).
  Hard: the student's cross-entropy at T = 1 against the labels, averaged
  over every position. Loss: alpha * soft + (1 - alpha) * hard.
  """
  if top_k:
    idx = _topk(teacher, top_k)
    s = np.take_along_axis(student, idx, axis=-1)
    t = np.take_along_axis(teacher, idx, axis=-1)
  else:
    s, t = student, teacher
  kl = _kl(_log_softmax(t / temperature), _log_softmax(s / temperature))
  soft = np.mean(kl * temperature**2)
  hard = np.mean(_cross_entropy(student, labels))
  return alpha * soft + (1 - alpha) * hard


@pytest.mark.parametrize(
  ("alpha", "temperature", "top_k"), [(0.5, 2.0, 0), (0.7, 3.0, K)]
)
def test_tunix_logit_strategy(alpha, temperature, top_k):
  student, teacher, _ = _data(11)
  labels = np.random.default_rng(12).integers(0, V, (B, T))  # no padding
  expected = _tunix_logit_strategy(
    student, teacher, labels, alpha=alpha, temperature=temperature, top_k=top_k
  )
  common = dict(
    temperature=temperature, hard_loss_weight=1.0 - alpha, labels=jnp.asarray(labels)
  )
  if top_k:
    # The teacher is at hand: its full log-sum-exp is the normalizer (any
    # value gives the same renormalized loss).
    idx = _topk(teacher, top_k)
    loss = jaxkl.topk_distillation_loss(
      jnp.asarray(student),
      jnp.asarray(idx),
      None,
      teacher_logits=jnp.asarray(np.take_along_axis(teacher, idx, axis=-1)),
      teacher_log_normalizer=jnp.asarray(logsumexp(teacher / temperature, axis=-1)),
      divergence="forward",
      tail="renormalize",
      **common,
    )
  else:
    loss = jaxkl.distillation_loss(jnp.asarray(student), jnp.asarray(teacher), **common)
  _close(loss, expected)


# -- EasyDeL ---------------------------------------------------------------------


def _easydel_mask(attention_mask, loss_mask, labels):
  mask = loss_mask if loss_mask is not None else attention_mask
  if labels is not None:
    valid = labels != -100
    mask = valid if mask is None else mask & valid
  return mask


def _easydel_distillation(
  student, teacher, mask, labels, *, use_hard_labels, alpha, temperature
):
  """EasyDeL's ``distillation_loss`` (easydel/trainers/distillation_trainer/_fn.py;
  used by the DistillationTrainer and the OnPolicyDistillationTrainer).

  KL(teacher_T || student_T), both logits divided by T, averaged over the
  mask (loss_mask, else attention_mask, times labels != -100; at least 1),
  times T^2, times alpha; plus (1 - alpha) times the student's masked mean
  cross-entropy at T = 1 when use_hard_labels.
  """
  log_p = _log_softmax(teacher / temperature)
  log_q = _log_softmax(student / temperature)
  n = max(mask.sum(), 1)
  kl = temperature**2 * np.where(mask, _kl(log_p, log_q), 0.0).sum() / n
  total = alpha * kl
  if use_hard_labels:
    ce = _cross_entropy(student, np.where(labels == -100, 0, labels))
    total = total + (1 - alpha) * np.where(mask, ce, 0.0).sum() / n
  return total


@pytest.mark.parametrize("use_hard_labels", [False, True])
def test_easydel_distillation(use_hard_labels):
  alpha, temperature = 0.9, 2.0
  student, teacher, labels = _data(13)
  attention_mask = np.ones((B, T), bool)
  attention_mask[1, -1] = False
  mask = _easydel_mask(attention_mask, None, labels)
  expected = _easydel_distillation(
    student,
    teacher,
    mask,
    labels,
    use_hard_labels=use_hard_labels,
    alpha=alpha,
    temperature=temperature,
  )
  loss = jaxkl.distillation_loss(
    jnp.asarray(student),
    jnp.asarray(teacher),
    temperature=temperature,
    hard_loss_weight=1.0 - alpha if use_hard_labels else 0.0,
    labels=jnp.asarray(labels),
    where=jnp.asarray(attention_mask),
  )
  if not use_hard_labels:
    loss = alpha * loss  # EasyDeL keeps alpha on the soft loss alone
  _close(loss, expected)


def _easydel_gkd_jsd(student, teacher, mask, *, beta, temperature):
  """EasyDeL's ``generalized_jsd_loss``
  (easydel/trainers/generalized_knowledge_distillation_trainer/_fn.py).

  Both logits divided by T; teacher P, student Q. beta <= 0: KL(Q || P);
  beta >= 1: KL(P || Q); else beta KL(P || M') + (1 - beta) KL(Q || M')
  with M' = (1 - beta) P + beta Q. Mean over the mask (at least 1); no T^2.
  """
  log_p = _log_softmax(teacher / temperature)
  log_q = _log_softmax(student / temperature)
  if beta <= 0:
    per_token = _kl(log_q, log_p)
  elif beta >= 1:
    per_token = _kl(log_p, log_q)
  else:
    log_m = np.logaddexp(log_p + np.log1p(-beta), log_q + np.log(beta))
    per_token = beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
  return np.where(mask, per_token, 0.0).sum() / max(mask.sum(), 1)


@pytest.mark.parametrize(
  ("beta", "divergence", "jaxkl_beta"),
  [(0.0, "reverse", 0.5), (1.0, "forward", 0.5), (0.5, "jsd", 0.5)],
)
def test_easydel_gkd_expressible(beta, divergence, jaxkl_beta):
  temperature = 0.9
  student, teacher, labels = _data(14)
  mask = labels != -100
  expected = _easydel_gkd_jsd(
    student, teacher, mask, beta=beta, temperature=temperature
  )
  loss = jaxkl.distillation_loss(
    jnp.asarray(student),
    jnp.asarray(teacher),
    divergence=divergence,
    beta=jaxkl_beta,
    temperature=temperature,
    temperature_scaling="none",
    where=jnp.asarray(mask),
  )
  _close(loss, expected)


def test_easydel_gkd_interior_beta_is_another_divergence():
  # For 0 < beta < 1, beta != 1/2, EasyDeL weights KL(P || M') by beta but
  # mixes M' = (1 - beta) P + beta Q: neither jaxkl's JSD(beta) nor JSD(1 - beta)
  # (the table says so). Checked on the reference alone, per token.
  student, teacher, _ = _data(15)
  log_p, log_q = _log_softmax(teacher), _log_softmax(student)
  ones = np.ones((B, T), bool)
  for beta in (0.2, 0.7):
    easydel = _easydel_gkd_jsd(student, teacher, ones, beta=beta, temperature=1.0)
    for b in (beta, 1 - beta):
      liger = np.mean(_liger_jsd(log_q, log_p, beta=b))
      assert abs(easydel - liger) > 1e-3
  # ... but it tends to the KLs at the endpoints (continuous there), where
  # jaxkl's / Liger's / TRL's JSD(beta) tends to 0 and the endpoints are
  # special-cased.
  near = _easydel_gkd_jsd(student, teacher, ones, beta=1e-9, temperature=1.0)
  np.testing.assert_allclose(near, np.mean(_kl(log_q, log_p)), rtol=1e-6)
  assert np.mean(_liger_jsd(log_q, log_p, beta=1e-9)) < 1e-6


def _easydel_partial_kl(student, teacher_idx, teacher_lp, mask, *, temperature):
  """EasyDeL's ``partial_kl_distillation_loss`` soft term
  (easydel/trainers/sparse_distillation_trainer/_fn.py), before alpha.

  Teacher: softmax(teacher_top_k_logprobs / T) over the K slots; student: the
  full-vocabulary log-softmax of logits / T gathered at the K indices;
  per token -sum_k p_k log q_k (a cross-entropy), masked mean, times T^2.
  """
  p_k = np.exp(_log_softmax(teacher_lp / temperature))
  log_q = np.take_along_axis(_log_softmax(student / temperature), teacher_idx, axis=-1)
  per_token = -(p_k * log_q).sum(-1)
  return temperature**2 * np.where(mask, per_token, 0.0).sum() / max(mask.sum(), 1)


def test_easydel_sparse_partial_kl_is_bucket_kl_plus_teacher_entropy():
  # The "partial KL" is a cross-entropy: KL(P~ || Q) with the renormalized
  # top-K teacher P~ (zero mass on the rest) -- jaxkl's tail='bucket' with a
  # teacher whose listed mass is 1 -- plus the teacher's entropy H(P~), a
  # constant (same gradients).
  temperature = 2.0
  student, teacher, labels = _data(16)
  mask = labels != -100
  idx = _topk(teacher, K)
  teacher_lp = np.take_along_axis(_log_softmax(teacher), idx, axis=-1)
  expected = _easydel_partial_kl(
    student, idx, teacher_lp, mask, temperature=temperature
  )
  log_p_k = _log_softmax(teacher_lp / temperature)
  entropy = temperature**2 * np.where(mask, _entropy(log_p_k), 0.0).sum() / mask.sum()
  loss = jaxkl.topk_distillation_loss(
    jnp.asarray(student),
    jnp.asarray(idx),
    None,
    teacher_logits=jnp.asarray(teacher_lp),
    teacher_log_normalizer=jnp.asarray(logsumexp(teacher_lp / temperature, axis=-1)),
    divergence="forward",
    tail="bucket",
    temperature=temperature,
    labels=jnp.asarray(labels),
  )
  _close(loss + entropy, expected)
  # Same loss from the renormalized log-probabilities and the student
  # temperature alone.
  loss2 = jaxkl.topk_distillation_loss(
    jnp.asarray(student),
    jnp.asarray(idx),
    jnp.asarray(log_p_k),
    divergence="forward",
    tail="bucket",
    student_temperature=temperature,
    temperature_scaling="square",
    labels=jnp.asarray(labels),
  )
  _close(loss2 + entropy, expected)


# -- the references agree with each other where the frameworks do ------------


def test_references_agree_where_the_conventions_coincide():
  # Independent references, cross-checked on the same numbers: TRL's and
  # Liger's JSD(beta); MaxText's and Tunix's and EasyDeL's soft loss (forward
  # KL, T^2) on unmasked tokens; TRL forward KL = MaxText soft / T^2.
  student, teacher, _ = _data(17)
  everything = np.ones((B, T), bool)
  for beta in (0.0, 0.25, 1.0):
    trl = _trl_generalized_jsd(
      student, teacher, np.zeros((B, T), int), beta=beta, temperature=1.5
    )
    liger = np.mean(
      _liger_jsd(_log_softmax(student / 1.5), _log_softmax(teacher / 1.5), beta=beta)
    )
    np.testing.assert_allclose(trl, liger, rtol=1e-12)
  tunix = _tunix_logit_strategy(
    student, teacher, np.zeros((B, T), int), alpha=1.0, temperature=2.0
  )
  maxtext = _maxtext_combined(
    student,
    teacher,
    np.ones((B, T), int),
    everything,
    pad_id=0,
    alpha=1.0,
    temperature=2.0,
  )
  easydel = _easydel_distillation(
    student,
    teacher,
    everything,
    None,
    use_hard_labels=False,
    alpha=1.0,
    temperature=2.0,
  )
  trl = _trl_generalized_jsd(
    student, teacher, np.zeros((B, T), int), beta=0.0, temperature=2.0
  )
  np.testing.assert_allclose([maxtext, easydel, 4.0 * trl], tunix, rtol=1e-12)
  # EasyDeL GKD's beta = 0 is TRL's beta = 1 (the endpoints swap).
  np.testing.assert_allclose(
    _easydel_gkd_jsd(student, teacher, everything, beta=0.0, temperature=1.0),
    _trl_generalized_jsd(student, teacher, np.zeros((B, T), int), beta=1.0),
    rtol=1e-12,
  )
  # Hand-worked: P = (3/4, 1/4), Q = (1/4, 3/4): KL(P || Q) = (1/2) log 3.
  p = np.log(np.array([[[0.75, 0.25]]]))
  q = np.log(np.array([[[0.25, 0.75]]]))
  np.testing.assert_allclose(
    _trl_generalized_jsd(q, p, beta=0.0), 0.5 * np.log(3.0), rtol=1e-14
  )


def test_verl_truncated_sum_is_not_a_divergence():
  # verl's top-k forward KL (verl/trainer/distillation/fsdp/losses.py,
  # ``compute_distillation_loss_topk`` / ``kullback_leibler_divergence``)
  # sums p_i log(p_i / q_i) over the teacher's top-k classes with the full
  # distributions' log-probabilities, unrenormalized. When the student puts
  # more mass than the teacher on those classes it is negative; jaxkl's
  # tail='bucket' on the same numbers is >= 0.
  log_p = np.log(np.array([0.5, 0.3, 0.1, 0.1]))
  logits_q = np.log(np.array([0.6, 0.35, 0.04, 0.01]))
  idx = np.array([0, 1])
  truncated = np.sum(np.exp(log_p[idx]) * (log_p[idx] - logits_q[idx]))
  assert truncated < 0
  # Bucket: P = (0.5, 0.3, 0.2), Q = (0.6, 0.35, 0.05).
  bucket = _kl(np.log([0.5, 0.3, 0.2]), np.log([0.6, 0.35, 0.05]))
  assert bucket > 0
  value = jaxkl.topk_divergence_from_logits(
    jnp.asarray(logits_q), jnp.asarray(idx), jnp.asarray(log_p[idx])
  )
  _close(value, bucket)


def test_jsd_beta_direction_hand_worked():
  # jaxkl, TRL and Liger: beta = 0 is KL(teacher || student) (forward),
  # beta = 1 is KL(student || teacher) (reverse).
  student = jnp.log(jnp.array([[0.25, 0.75]]))
  teacher = jnp.log(jnp.array([[0.5, 0.5]]))
  forward = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
  reverse = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
  for beta, expected in ((0.0, forward), (1.0, reverse)):
    loss = jaxkl.distillation_loss(
      student, teacher, divergence="jsd", beta=beta, temperature_scaling="none"
    )
    _close(loss, expected)
