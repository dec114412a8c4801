r"""Knowledge distillation with Flax NNX, optax and jaxkl on synthetic data.

A fixed, randomly initialized *teacher* MLP maps token features
``x ~ N(0, I)`` to logits over ``num_classes`` classes. A smaller *student*
MLP is trained with Adam to match the teacher's temperature-softened
distribution with :func:`jaxkl.distillation_loss`:

.. math::

   \mathcal{L} = T^2 \cdot \operatorname{mean}_{\text{kept tokens}}
     D_{\mathrm{KL}}(\mathrm{softmax}(t / T) \,\|\, \mathrm{softmax}(s / T)).

Each training batch holds variable-length sequences padded to a fixed length;
the padding tokens are excluded from the loss with a boolean ``where=`` mask,
as padded or prompt tokens are in language-model distillation. Progress is
measured by the held-out KL divergence at ``T = 1``,
:func:`jaxkl.kl_divergence_from_logits`, averaged over fresh tokens.

Run ``python examples/distill_flax.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import ArrayLike

import jaxkl


class MLP(nnx.Module):
  """A multilayer perceptron with GELU activations, in float32.

  Attributes:
    in_features: the input dimension.
    body: the hidden layers and their activations, an ``nnx.Sequential``.
    head: the output ``nnx.Linear`` layer (the logits).
    logit_scale: a constant factor applied to the logits.
  """

  def __init__(
    self,
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    rngs: nnx.Rngs,
    logit_scale: float = 1.0,
  ):
    """Builds the layers.

    Args:
      in_features: the input dimension.
      hidden: the widths of the hidden layers.
      out_features: the number of classes.
      rngs: the random number streams used to initialize the weights.
      logit_scale: a constant multiplying the logits (sharpens a randomly
        initialized teacher's otherwise nearly uniform distribution).
    """
    self.in_features = in_features
    widths = [in_features, *hidden]
    layers = []
    for a, b in itertools.pairwise(widths):
      layers += [
        nnx.Linear(a, b, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs),
        jax.nn.gelu,
      ]
    self.body = nnx.Sequential(*layers)
    self.head = nnx.Linear(
      widths[-1], out_features, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs
    )
    self.logit_scale = logit_scale

  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns the logits, shape ``x.shape[:-1] + (out_features,)``."""
    return self.head(self.body(x)) * jnp.float32(self.logit_scale)


def sample_batch(
  key: jax.Array, batch_size: int, seq_len: int, in_features: int
) -> tuple[jax.Array, jax.Array]:
  """Draws padded sequences of Gaussian token features and their mask.

  Args:
    key: a PRNG key.
    batch_size: the number of sequences.
    seq_len: the padded length.
    in_features: the feature dimension.

  Returns:
    ``(x, mask)``: features of shape ``[batch_size, seq_len, in_features]``
    (float32) and a boolean mask of shape ``[batch_size, seq_len]``, ``True``
    on the real tokens (each sequence has a random length in
    ``[1, seq_len]``; the rest is padding).
  """
  x_key, len_key = jax.random.split(key)
  x = jax.random.normal(x_key, (batch_size, seq_len, in_features), dtype=jnp.float32)
  lengths = jax.random.randint(
    len_key, (batch_size, 1), 1, seq_len + 1, dtype=jnp.int32
  )
  positions = jnp.arange(seq_len, dtype=jnp.int32)[None, :]
  return x, positions < lengths


def make_optimizer(learning_rate: ArrayLike) -> optax.GradientTransformation:
  """The student's optimizer: Adam.

  Args:
    learning_rate: Adam's learning rate, a float or a scalar array (it may be
      traced).

  Returns:
    An optax gradient transformation.
  """
  return optax.adam(learning_rate)


@nnx.jit(static_argnames=("batch_size", "seq_len"))
def train_step(
  student: MLP,
  teacher: MLP,
  opt_state: optax.OptState,
  key: jax.Array,
  temperature: jax.Array,
  learning_rate: jax.Array,
  *,
  batch_size: int,
  seq_len: int,
) -> tuple[jax.Array, jax.Array, optax.OptState]:
  """Draws a batch and takes one Adam step; updates ``student`` in place.

  The temperature and the learning rate are traced arguments, so a sweep over
  them, or a new run, reuses the compiled step.

  Args:
    student: the student model (trained).
    teacher: the teacher model (fixed: its logits are not differentiated).
    opt_state: the optimizer state of the student's parameters.
    key: the PRNG key of this step's batch (see :func:`sample_batch`).
    temperature: the distillation temperature, a float32 scalar.
    learning_rate: Adam's learning rate, a float32 scalar.
    batch_size: sequences per batch. Static.
    seq_len: padded sequence length. Static.

  Returns:
    ``(loss, kept, opt_state)``: the loss before the update (a float32
    scalar), the number of non-padding tokens in the batch (an int32 scalar)
    and the new optimizer state.
  """
  x, mask = sample_batch(key, batch_size, seq_len, student.in_features)
  teacher_logits = jax.lax.stop_gradient(teacher(x))

  def loss_fn(model: MLP) -> jax.Array:
    return jaxkl.distillation_loss(
      model(x), teacher_logits, temperature=temperature, where=mask
    )

  loss, grads = nnx.value_and_grad(loss_fn)(student)
  params = nnx.state(student, nnx.Param)
  # optax's Adam mixes Python floats with its int32 step count (bias
  # correction), which strict dtype promotion rejects; allow the standard
  # rules for the optimizer only, so the example also runs with
  # jax_numpy_dtype_promotion="strict" (as in this repository's tests).
  with jax.numpy_dtype_promotion("standard"):
    updates, opt_state = make_optimizer(learning_rate).update(grads, opt_state, params)
  nnx.update(student, optax.apply_updates(params, updates))
  return loss, jnp.sum(mask, dtype=jnp.int32), opt_state


@nnx.jit(
  static_argnames=(
    "in_features",
    "num_classes",
    "teacher_hidden",
    "student_hidden",
    "teacher_scale",
  )
)
def create_models(
  teacher_key: jax.Array,
  student_key: jax.Array,
  *,
  in_features: int,
  num_classes: int,
  teacher_hidden: tuple[int, ...],
  student_hidden: tuple[int, ...],
  teacher_scale: float,
) -> tuple[MLP, MLP]:
  """Initializes the teacher and the student (in one compiled call).

  Args:
    teacher_key: the PRNG key of the teacher's weights.
    student_key: the PRNG key of the student's weights.
    in_features: input dimension. Static.
    num_classes: number of classes. Static.
    teacher_hidden: teacher hidden widths. Static.
    student_hidden: student hidden widths. Static.
    teacher_scale: the factor sharpening the teacher's logits. Static.

  Returns:
    ``(teacher, student)``.
  """
  teacher = MLP(
    in_features,
    teacher_hidden,
    num_classes,
    rngs=nnx.Rngs(teacher_key),
    logit_scale=teacher_scale,
  )
  student = MLP(in_features, student_hidden, num_classes, rngs=nnx.Rngs(student_key))
  return teacher, student


@nnx.jit
def heldout_kl(student: MLP, teacher: MLP, x: jax.Array) -> jax.Array:
  """Mean KL(teacher ‖ student) at temperature 1 over the tokens ``x``.

  Args:
    student: the student model.
    teacher: the teacher model.
    x: token features, shape ``[..., in_features]``.

  Returns:
    A float32 scalar.
  """
  return jnp.mean(jaxkl.kl_divergence_from_logits(student(x), teacher(x)))


def run(
  *,
  steps: int = 300,
  temperature: float = 2.0,
  seed: int = 0,
  learning_rate: float = 1e-2,
  batch_size: int = 32,
  seq_len: int = 16,
  in_features: int = 32,
  num_classes: int = 20,
  teacher_hidden: Sequence[int] = (256, 256),
  student_hidden: Sequence[int] = (128,),
  teacher_scale: float = 4.0,
  heldout_size: int = 4096,
) -> dict[str, Any]:
  """Trains the student against the teacher and returns the metrics.

  Args:
    steps: the number of Adam steps (one fresh batch each).
    temperature: the distillation temperature ``T``.
    seed: the seed of every random draw (models, data, held-out set).
    learning_rate: Adam's learning rate.
    batch_size: sequences per batch.
    seq_len: padded sequence length.
    in_features: input dimension.
    num_classes: number of classes (the logits' size).
    teacher_hidden: teacher hidden widths.
    student_hidden: student hidden widths.
    teacher_scale: the factor sharpening the teacher's logits.
    heldout_size: number of held-out tokens.

  Returns:
    A dict with ``'initial_kl'`` and ``'final_kl'`` (held-out mean KL at
    ``T = 1``, Python floats), ``'losses'`` (the training loss at every step,
    a float32 NumPy array), ``'kept_fraction'`` (the fraction of non-padding
    tokens seen in training) and ``'seconds'`` (wall time, compile included).
  """
  start = time.perf_counter()
  root = jax.random.key(seed)
  teacher_key, student_key, heldout_key, data_key = jax.random.split(root, 4)
  teacher, student = create_models(
    teacher_key,
    student_key,
    in_features=in_features,
    num_classes=num_classes,
    teacher_hidden=tuple(teacher_hidden),
    student_hidden=tuple(student_hidden),
    teacher_scale=teacher_scale,
  )
  lr = jnp.asarray(learning_rate, dtype=jnp.float32)
  opt_state = make_optimizer(lr).init(nnx.state(student, nnx.Param))
  x_heldout = jax.random.normal(
    heldout_key, (heldout_size, in_features), dtype=jnp.float32
  )
  initial_kl = float(heldout_kl(student, teacher, x_heldout))

  t = jnp.asarray(temperature, dtype=jnp.float32)
  step_keys = jax.random.split(data_key, steps)
  losses, kept = [], []
  for i in range(steps):
    loss, n, opt_state = train_step(
      student,
      teacher,
      opt_state,
      step_keys[i],
      t,
      lr,
      batch_size=batch_size,
      seq_len=seq_len,
    )
    losses.append(loss)
    kept.append(n)

  final_kl = float(heldout_kl(student, teacher, x_heldout))
  losses = np.asarray(jax.device_get(losses), dtype=np.float32)
  kept_total = int(np.sum(jax.device_get(kept), dtype=np.int64))
  return {
    "initial_kl": initial_kl,
    "final_kl": final_kl,
    "losses": losses,
    "kept_fraction": kept_total / (steps * batch_size * seq_len),
    "seconds": time.perf_counter() - start,
  }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Parses the command line, runs the distillation and prints a report.

  Args:
    argv: the arguments (without the program name); ``None`` reads
      ``sys.argv``.

  Returns:
    The metrics of :func:`run`.
  """
  parser = argparse.ArgumentParser(
    description="Distil a fixed teacher MLP into a smaller student MLP "
    "(Flax NNX + optax) with jaxkl.distillation_loss."
  )
  parser.add_argument(
    "--steps", type=int, default=300, help="number of Adam steps (default: %(default)s)"
  )
  parser.add_argument(
    "--temperature",
    type=float,
    default=2.0,
    help="distillation temperature T (default: %(default)s)",
  )
  parser.add_argument(
    "--seed", type=int, default=0, help="random seed (default: %(default)s)"
  )
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error("--steps must be at least 1")
  if not args.temperature > 0:
    parser.error("--temperature must be > 0")

  metrics = run(steps=args.steps, temperature=args.temperature, seed=args.seed)
  losses = metrics["losses"]
  marks = sorted(
    {0, len(losses) // 4, len(losses) // 2, 3 * len(losses) // 4, len(losses) - 1}
  )
  print(
    f"distillation, T={args.temperature}, {args.steps} steps, "
    f"seed {args.seed}; {metrics['kept_fraction']:.0%} of the tokens "
    "kept (the rest is padding, masked out)"
  )
  for i in marks:
    print(f"  step {i + 1:5d}  loss (T^2 * KL at T) {losses[i]:.4f}")
  print(
    f"held-out KL(teacher || student) at T=1: "
    f"{metrics['initial_kl']:.4f} -> {metrics['final_kl']:.4f} "
    f"({metrics['initial_kl'] / metrics['final_kl']:.1f}x lower) "
    f"in {metrics['seconds']:.1f} s"
  )
  return metrics


if __name__ == "__main__":
  main()
