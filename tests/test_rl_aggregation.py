"""jaxkl.aggregate_loss: verl's loss-aggregation modes, global counts, packing."""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkl

MODES = (
  "token-mean",
  "token-sum",
  "seq-mean-token-sum",
  "seq-mean-token-mean",
  "seq-mean-token-sum-norm",
)
COUNTED = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


# ----------------------------------------------------------------------------
# Independent references, NumPy float64.


def _sequences(values, mask, ids):
  """``(sum over kept tokens, number of kept tokens)`` of every sequence."""
  length = values.shape[-1]
  rows = values.reshape(-1, length)
  kept = np.broadcast_to(mask, values.shape).reshape(rows.shape)
  ids = np.zeros(rows.shape, int) if ids is None else ids.reshape(rows.shape)
  out = []
  for row, row_kept, row_ids in zip(rows, kept, ids, strict=True):
    for key in np.unique(row_ids):
      chosen = (row_ids == key) & row_kept
      out.append((float(np.sum(row[chosen])), int(np.sum(chosen))))
  return out


def reference(values, mask, mode, ids=None, num_items=None, horizon=None):
  """The formula of each mode, from per-sequence sums and counts."""
  values = np.asarray(values, np.float64)
  mask = np.ones(values.shape, bool) if mask is None else np.asarray(mask)
  sequences = _sequences(values, mask, ids)
  total = sum(s for s, _ in sequences)
  tokens = sum(n for _, n in sequences)
  present = [(s, n) for s, n in sequences if n > 0]
  if mode == "token-sum":
    return total
  if mode == "seq-mean-token-sum-norm":
    return total / (values.shape[-1] if horizon is None else horizon)
  if mode == "token-mean":
    numerator, count = total, tokens
  elif mode == "seq-mean-token-sum":
    numerator, count = sum(s for s, _ in present), len(present)
  else:
    numerator, count = sum(s / n for s, n in present), len(present)
  count = count if num_items is None else num_items
  return numerator / count if count else 0.0


def reference_gradient(values, mask, mode, ids=None, horizon=None):
  """d(loss)/d(values) of each mode: the weight of every kept token."""
  values = np.asarray(values, np.float64)
  kept = np.broadcast_to(
    np.ones(values.shape, bool) if mask is None else mask, values.shape
  )
  rows = kept.reshape(-1, values.shape[-1])
  ids = np.zeros(rows.shape, int) if ids is None else ids.reshape(rows.shape)
  grad = np.zeros(rows.shape)
  counts = {}
  for r, (row_kept, row_ids) in enumerate(zip(rows, ids, strict=True)):
    for key in np.unique(row_ids):
      counts[r, key] = int(np.sum((row_ids == key) & row_kept))
  present = sum(1 for n in counts.values() if n > 0)
  tokens = int(np.sum(rows))
  for (r, t), keep in np.ndenumerate(rows):
    if not keep:
      continue
    n = counts[r, ids[r, t]]
    grad[r, t] = {
      "token-mean": 1 / tokens,
      "token-sum": 1.0,
      "seq-mean-token-sum": 1 / present,
      "seq-mean-token-mean": 1 / (n * present),
      "seq-mean-token-sum-norm": 1 / (values.shape[-1] if horizon is None else horizon),
    }[mode]
  return grad.reshape(values.shape)


def verl_formula(loss_mat, loss_mask, mode, horizon=None):
  """verl's ``agg_loss`` (dp_size 1, no global info) as formulas on [B, T]."""
  masked = loss_mat * loss_mask
  seq_tokens = loss_mask.sum(-1)
  seq_present = (seq_tokens > 0).astype(float)
  if mode == "token-mean":
    return masked.sum() / loss_mask.sum()
  if mode == "seq-mean-token-sum":
    return (masked.sum(-1) * seq_present).sum() / seq_present.sum()
  if mode == "seq-mean-token-mean":
    per_seq = masked.sum(-1) / (seq_tokens + 1e-8)
    return (per_seq * seq_present).sum() / seq_present.sum()
  assert mode == "seq-mean-token-sum-norm"
  return masked.sum() / (loss_mat.shape[-1] if horizon is None else horizon)


def _garbage(rng, values, mask):
  """``values`` with inf, -inf and NaN where ``mask`` is False."""
  junk = rng.choice(np.array([np.inf, -np.inf, np.nan]), size=values.shape)
  return np.where(np.broadcast_to(mask, values.shape), values, junk)


# ----------------------------------------------------------------------------
# A hand-worked example (and verl's numbers on it).

# Row 0 keeps [1, 2], row 1 keeps [5, 6, 7, 8], row 2 keeps nothing; masked
# entries hold garbage. Sums 3 and 26 (total 29) over 2 and 4 tokens (6).
HAND_VALUES = np.array(
  [[1.0, 2.0, np.nan, np.inf], [5.0, 6.0, 7.0, 8.0], [-np.inf, np.nan, 1.0, 1.0]],
  np.float32,
)
HAND_MASK = np.array(
  [[True, True, False, False], [True, True, True, True], [False, False, False, False]]
)
HAND_EXPECTED = {
  "token-mean": 29 / 6,
  "token-sum": 29.0,
  "seq-mean-token-sum": (3 + 26) / 2,
  "seq-mean-token-mean": (3 / 2 + 26 / 4) / 2,  # = 4
  "seq-mean-token-sum-norm": 29 / 4,
}


@pytest.mark.parametrize("mode", MODES)
def test_hand_worked_example(mode):
  got = jaxkl.aggregate_loss(HAND_VALUES, HAND_MASK, mode=mode)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, HAND_EXPECTED[mode], rtol=1e-6)
  if mode != "token-sum":  # verl has no 'token-sum'
    clean = np.where(HAND_MASK, HAND_VALUES, 0.0).astype(np.float64)
    np.testing.assert_allclose(
      got, verl_formula(clean, HAND_MASK.astype(float), mode), rtol=1e-6
    )


def test_hand_worked_example_with_constants():
  horizon = jaxkl.aggregate_loss(
    HAND_VALUES, HAND_MASK, mode="seq-mean-token-sum-norm", horizon=8
  )
  np.testing.assert_allclose(horizon, 29 / 8, rtol=1e-6)
  # Global counts: 12 tokens and 4 sequences in the whole (larger) batch.
  for mode, count, numerator in [
    ("token-mean", 12, 29.0),
    ("seq-mean-token-sum", 4, 29.0),
    ("seq-mean-token-mean", 4, 8.0),
  ]:
    got = jaxkl.aggregate_loss(HAND_VALUES, HAND_MASK, mode=mode, num_items=count)
    np.testing.assert_allclose(got, numerator / count, rtol=1e-6)
  # Traced constants under jit.
  norm = jax.jit(
    functools.partial(jaxkl.aggregate_loss, mode="seq-mean-token-sum-norm")
  )(HAND_VALUES, HAND_MASK, horizon=jnp.asarray(8, jnp.int32))
  np.testing.assert_allclose(norm, 29 / 8, rtol=1e-6)


# ----------------------------------------------------------------------------
# Every mode against its formula: values and gradients, random masks and ids.


@hypothesis.given(
  seed=st.integers(0, 2**32 - 1),
  shape=st.sampled_from([(1, 1), (2, 5), (3, 4), (2, 2, 3), (6,)]),
  keep=st.sampled_from([0.0, 0.3, 0.8, 1.0]),
  packed=st.booleans(),
  mode=st.sampled_from(MODES),
)
@hypothesis.settings(max_examples=60, deadline=None)
def test_matches_formula_values_and_gradients(seed, shape, keep, packed, mode):
  rng = np.random.default_rng(seed)
  mask = rng.uniform(size=shape) < keep
  values = _garbage(rng, rng.normal(size=shape) * 3, mask).astype(np.float32)
  ids = rng.integers(-2, 3, size=shape) * 7 if packed else None
  horizon = 7 if (packed and mode == "seq-mean-token-sum-norm") else None
  loss = functools.partial(
    jaxkl.aggregate_loss, mode=mode, segment_ids=ids, horizon=horizon
  )
  got, grad = jax.value_and_grad(loss)(jnp.asarray(values), mask)
  expected = reference(values, mask, mode, ids, horizon=horizon)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    grad, reference_gradient(values, mask, mode, ids, horizon), rtol=1e-6
  )


@pytest.mark.parametrize("mode", [m for m in MODES if m != "token-sum"])
def test_matches_verl_where_verl_is_finite(mode, x64):
  rng = np.random.default_rng(0)
  values = rng.normal(size=(7, 9))
  mask = rng.uniform(size=(7, 9)) < 0.5
  mask[2] = False  # a sequence with no token: verl leaves it out too
  mask[0, 0] = True
  got = jaxkl.aggregate_loss(values, mask, mode=mode)
  assert got.dtype == jnp.float64
  # verl's 1e-8 in seq-mean-token-mean moves the result by ~1e-8 relative.
  np.testing.assert_allclose(
    got, verl_formula(values, mask.astype(float), mode), rtol=1e-7
  )
  np.testing.assert_allclose(got, reference(values, mask, mode), rtol=1e-13)


def test_seq_mean_token_mean_is_reduce_loss_sequence_mean():
  rng = np.random.default_rng(1)
  values = rng.normal(size=(4, 6)).astype(np.float32)
  mask = rng.uniform(size=(4, 6)) < 0.6
  ids = rng.integers(0, 3, size=(4, 6))
  np.testing.assert_allclose(
    jaxkl.aggregate_loss(values, mask, mode="seq-mean-token-mean", segment_ids=ids),
    jaxkl.reduce_loss(values, "sequence_mean", where=mask, segment_ids=ids),
    rtol=1e-6,
  )


@pytest.mark.parametrize("mode", MODES)
def test_no_mask_equals_all_true_mask(mode):
  values = np.arange(12, dtype=np.float32).reshape(3, 4)
  np.testing.assert_allclose(
    jaxkl.aggregate_loss(values, mode=mode),
    jaxkl.aggregate_loss(values, np.ones((3, 4), bool), mode=mode),
  )
  np.testing.assert_allclose(
    jaxkl.aggregate_loss(values, mode=mode), reference(values, None, mode)
  )


def test_mask_broadcasts_over_rows_and_positions():
  values = np.arange(12, dtype=np.float32).reshape(3, 4)
  rows = np.array([[True], [False], [True]])
  positions = np.array([True, True, False, False])
  for mode in MODES:
    np.testing.assert_allclose(
      jaxkl.aggregate_loss(values, rows, mode=mode),
      reference(values, rows, mode),
      rtol=1e-6,
    )
    np.testing.assert_allclose(
      jaxkl.aggregate_loss(values, positions, mode=mode),
      reference(values, positions, mode),
      rtol=1e-6,
    )


# ----------------------------------------------------------------------------
# Masks: all masked, garbage, edge shapes, dtypes.


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", [False, True])
def test_all_masked_is_zero_with_zero_gradient(mode, packed):
  values = jnp.array([[np.nan, np.inf, -np.inf], [1.0, 2.0, 3.0]], jnp.float32)
  mask = np.zeros((2, 3), bool)
  ids = np.array([[0, 0, 1], [2, 2, 2]]) if packed else None
  horizon = 3 if packed and mode == "seq-mean-token-sum-norm" else None
  loss = functools.partial(
    jaxkl.aggregate_loss, mode=mode, segment_ids=ids, horizon=horizon
  )
  value, grad = jax.value_and_grad(loss)(values, mask)
  assert value == 0.0
  np.testing.assert_array_equal(grad, np.zeros((2, 3)))
  value = jaxkl.aggregate_loss(
    values,
    mask,
    mode=mode,
    segment_ids=ids,
    horizon=horizon,
    num_items=5 if mode in COUNTED else None,
  )
  assert value == 0.0


@pytest.mark.parametrize("mode", MODES)
def test_empty_values_give_zero(mode):
  for shape in [(0, 4), (3, 0)]:
    got = jaxkl.aggregate_loss(jnp.zeros(shape), mode=mode)
    assert got.shape == () and got == 0.0


@pytest.mark.parametrize("mode", MODES)
def test_bfloat16_accumulates_in_float32(mode):
  rng = np.random.default_rng(2)
  values = jnp.asarray(rng.normal(size=(4, 300)), jnp.bfloat16)
  mask = rng.uniform(size=(4, 300)) < 0.7
  got = jaxkl.aggregate_loss(values, mask, mode=mode)
  assert got.dtype == jnp.bfloat16
  expected = reference(np.asarray(values.astype(jnp.float32)), mask, mode)
  # One bfloat16 rounding of the float32 result (8 significant bits).
  np.testing.assert_allclose(np.float32(got), expected, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_float64(mode, x64):
  rng = np.random.default_rng(3)
  values = rng.normal(size=(3, 5)) * 1e-200  # below float32's range
  mask = rng.uniform(size=(3, 5)) < 0.6
  got = jaxkl.aggregate_loss(values, mask, mode=mode)
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, reference(values, mask, mode), rtol=1e-13)


def test_huge_values_beside_masked_infinities():
  values = jnp.array([[3e38, np.inf], [-np.inf, 1e-30]], jnp.float32)
  mask = np.array([[True, False], [False, True]])
  for mode in MODES:
    value, grad = jax.value_and_grad(
      lambda v, mode=mode: jaxkl.aggregate_loss(v, mask, mode=mode)
    )(values)
    np.testing.assert_allclose(value, reference(values, mask, mode), rtol=1e-6)
    assert np.all(np.isfinite(grad))


# ----------------------------------------------------------------------------
# Global normalization: micro-batches and data-parallel shards add up.


def _global_count(mask, mode):
  """The count of the whole batch: kept tokens, or sequences with a token."""
  if mode == "token-mean":
    return int(np.sum(mask))
  return int(np.sum(np.any(mask, axis=-1)))


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_add_up_to_the_full_batch(mode):
  rng = np.random.default_rng(4)
  values = rng.normal(size=(6, 5)).astype(np.float32)
  mask = rng.uniform(size=(6, 5)) < 0.5
  mask[3] = False  # a sequence with no kept token
  full = jaxkl.aggregate_loss(values, mask, mode=mode)
  count = _global_count(mask, mode) if mode in COUNTED else None
  micro = [
    jaxkl.aggregate_loss(values[i : i + 2], mask[i : i + 2], mode=mode, num_items=count)
    for i in range(0, 6, 2)
  ]
  np.testing.assert_allclose(sum(micro), full, rtol=1e-6)
  np.testing.assert_allclose(full, reference(values, mask, mode), rtol=1e-6)
  # The micro-batches' gradients add up to the full batch's, too.
  grads = [
    jax.grad(
      lambda v, i=i: jaxkl.aggregate_loss(
        v, mask[i : i + 2], mode=mode, num_items=count
      )
    )(jnp.asarray(values[i : i + 2]))
    for i in range(0, 6, 2)
  ]
  np.testing.assert_allclose(
    np.concatenate(grads), reference_gradient(values, mask, mode), rtol=1e-6
  )


@pytest.mark.parametrize("mode", COUNTED)
def test_traced_global_count_under_jit(mode):
  rng = np.random.default_rng(5)
  values = rng.normal(size=(4, 6)).astype(np.float32)
  mask = rng.uniform(size=(4, 6)) < 0.6
  mask[1] = False
  aggregate = jax.jit(functools.partial(jaxkl.aggregate_loss, mode=mode))
  count = jnp.asarray(_global_count(mask, mode), jnp.int32)
  micro = [
    aggregate(values[i : i + 2], mask[i : i + 2], num_items=count) for i in (0, 2)
  ]
  np.testing.assert_allclose(sum(micro), reference(values, mask, mode), rtol=1e-6)


@pytest.mark.parametrize("mode", COUNTED)
def test_data_parallel_shards_with_psum_count(mode):
  rng = np.random.default_rng(6)
  values = rng.normal(size=(3, 2, 5)).astype(np.float32)  # 3 shards of 2 rows
  mask = rng.uniform(size=(3, 2, 5)) < 0.5
  mask[1, 0] = False

  def shard_loss(v, m):
    local = jnp.sum(m) if mode == "token-mean" else jnp.sum(jnp.any(m, axis=-1))
    count = jax.lax.psum(local, "dp")
    return jaxkl.aggregate_loss(v, m, mode=mode, num_items=count)

  losses = jax.jit(jax.vmap(shard_loss, axis_name="dp"))(values, mask)
  full = reference(values.reshape(6, 5), mask.reshape(6, 5), mode)
  np.testing.assert_allclose(jnp.sum(losses), full, rtol=1e-6)


def test_global_count_counts_sequences_not_tokens():
  # verl's trainer passes the mini-batch size, counting empty sequences too.
  values = np.array([[2.0, 4.0], [6.0, 0.0]], np.float32)
  mask = np.array([[True, True], [False, False]])
  got = jaxkl.aggregate_loss(values, mask, mode="seq-mean-token-mean", num_items=2)
  np.testing.assert_allclose(got, 3.0 / 2)
  got = jaxkl.aggregate_loss(values, mask, mode="seq-mean-token-sum", num_items=2)
  np.testing.assert_allclose(got, 6.0 / 2)


# ----------------------------------------------------------------------------
# Packed sequences equal the same sequences one per row.


def _pack(sequences, masks, width, rng):
  """Lays the sequences end to end in rows of ``width`` tokens.

  Each sequence gets a random distinct id within its row; padding gets id -1
  and holds garbage under a False mask.
  """
  rows, row_masks, row_ids = [], [], []
  row, row_mask, row_id = [], [], []
  ids = rng.permutation(1000)[: len(sequences)] * 3 + 5
  for seq, mask, key in zip(sequences, masks, ids, strict=True):
    if len(row) + len(seq) > width:
      rows.append(row), row_masks.append(row_mask), row_ids.append(row_id)
      row, row_mask, row_id = [], [], []
    row += list(seq)
    row_mask += list(mask)
    row_id += [key] * len(seq)
  rows.append(row), row_masks.append(row_mask), row_ids.append(row_id)
  pad = [width - len(r) for r in rows]
  values = np.array([r + [np.nan] * p for r, p in zip(rows, pad, strict=True)])
  mask = np.array([m + [False] * p for m, p in zip(row_masks, pad, strict=True)])
  ids = np.array([i + [-1] * p for i, p in zip(row_ids, pad, strict=True)])
  return values.astype(np.float32), mask, ids


@hypothesis.given(
  seed=st.integers(0, 2**32 - 1),
  lengths=st.lists(st.integers(1, 6), min_size=1, max_size=6),
  mode=st.sampled_from(MODES),
)
@hypothesis.settings(max_examples=40, deadline=None)
def test_packed_equals_unpacked(seed, lengths, mode):
  rng = np.random.default_rng(seed)
  horizon = 6
  sequences = [rng.normal(size=n) for n in lengths]
  masks = [rng.uniform(size=n) < 0.7 for n in lengths]
  unpacked = np.full((len(lengths), horizon), np.inf, np.float32)
  unpacked_mask = np.zeros((len(lengths), horizon), bool)
  for i, (seq, mask) in enumerate(zip(sequences, masks, strict=True)):
    unpacked[i, : len(seq)], unpacked_mask[i, : len(seq)] = seq, mask
  packed, packed_mask, ids = _pack(sequences, masks, 12, rng)
  extra = {"horizon": horizon} if mode == "seq-mean-token-sum-norm" else {}
  expected = jaxkl.aggregate_loss(unpacked, unpacked_mask, mode=mode, **extra)
  got = jaxkl.aggregate_loss(packed, packed_mask, mode=mode, segment_ids=ids, **extra)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    got, reference(unpacked, unpacked_mask, mode), rtol=1e-5, atol=1e-6
  )


def test_packed_equal_ids_in_different_rows_are_different_sequences():
  values = np.array([[1.0, 3.0], [5.0, 7.0]], np.float32)
  ids = np.zeros((2, 2), np.int32)
  got = jaxkl.aggregate_loss(values, mode="seq-mean-token-sum", segment_ids=ids)
  np.testing.assert_allclose(got, (4.0 + 12.0) / 2)


# ----------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("bad", ["mean", "seq-mean", "Token-Mean", "", None, 3])
def test_unknown_mode_lists_the_modes(bad):
  with pytest.raises(ValueError, match="`mode` must be one of") as info:
    jaxkl.aggregate_loss(jnp.ones((2, 3)), mode=bad)
  for mode in MODES:
    assert repr(mode) in str(info.value)


def test_shape_and_dtype_errors():
  values = jnp.ones((2, 3))
  with pytest.raises(ValueError, match="sequence axis"):
    jaxkl.aggregate_loss(jnp.ones(()))
  with pytest.raises(TypeError, match="floating"):
    jaxkl.aggregate_loss(jnp.ones((2, 3), jnp.int32))
  with pytest.raises(TypeError, match=r"astype\(bool\)"):
    jaxkl.aggregate_loss(values, jnp.ones((2, 3)))
  with pytest.raises(ValueError):
    jaxkl.aggregate_loss(values, jnp.ones((3, 2), bool))
  with pytest.raises(ValueError, match="per-token shape"):
    jaxkl.aggregate_loss(values, segment_ids=jnp.zeros((2, 2), jnp.int32))
  with pytest.raises(TypeError, match="integers"):
    jaxkl.aggregate_loss(values, segment_ids=jnp.zeros((2, 3)))


@pytest.mark.parametrize("mode", ["token-sum", "seq-mean-token-sum-norm"])
def test_num_items_refused_where_it_means_nothing(mode):
  with pytest.raises(ValueError, match="divides by no count"):
    jaxkl.aggregate_loss(jnp.ones((2, 3)), mode=mode, num_items=6)


@pytest.mark.parametrize(
  "bad, error",
  [
    (0, ValueError),
    (-1.0, ValueError),
    (np.nan, ValueError),
    (np.inf, ValueError),
    (True, TypeError),
    ("6", TypeError),
    (np.ones(2), ValueError),
  ],
)
def test_bad_counts(bad, error):
  with pytest.raises(error, match="`num_items`"):
    jaxkl.aggregate_loss(jnp.ones((2, 3)), num_items=bad)
  with pytest.raises(error, match="`horizon`"):
    jaxkl.aggregate_loss(jnp.ones((2, 3)), mode="seq-mean-token-sum-norm", horizon=bad)


def test_horizon_errors():
  with pytest.raises(ValueError, match="`horizon` is the constant divisor"):
    jaxkl.aggregate_loss(jnp.ones((2, 3)), mode="token-mean", horizon=3)
  with pytest.raises(ValueError, match="needs `horizon`"):
    jaxkl.aggregate_loss(
      jnp.ones((2, 3)),
      mode="seq-mean-token-sum-norm",
      segment_ids=jnp.zeros((2, 3), jnp.int32),
    )


@pytest.mark.parametrize(
  "mode, count",
  [
    ("token-mean", lambda m: m.sum()),
    ("seq-mean-token-sum", lambda m: m.any(-1).sum()),
    ("seq-mean-token-mean", lambda m: m.any(-1).sum()),
  ],
)
def test_traced_global_count_of_zero_gives_zero(mode, count):
  """A wholly masked global batch: the psum'ed count is 0 under jit; the
  loss is 0 with a zero gradient (not 0 / 0), garbage in the values or not."""
  values = jnp.array([[1.0, jnp.nan, 3.0], [jnp.inf, 2.0, -1.0]])
  mask = jnp.zeros((2, 3), bool)

  def loss(v, m):
    return jaxkl.aggregate_loss(v, m, mode=mode, num_items=count(m))

  value, grad = jax.jit(jax.value_and_grad(loss))(values, mask)
  assert float(value) == 0.0
  np.testing.assert_array_equal(grad, np.zeros((2, 3)))
  reduced = jax.jit(
    lambda v, m: jaxkl.reduce_loss(v, "mean", where=m, num_items_in_batch=m.sum())
  )(values, mask)
  assert float(reduced) == 0.0
