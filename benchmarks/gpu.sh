#!/usr/bin/env bash
# jaxkl on a machine with an NVIDIA GPU: tests and benchmarks in < 8 minutes.
#
# Run from the repository root (or anywhere: it changes to the root itself):
#
#     bash benchmarks/gpu.sh              # everything (about 4-8 minutes)
#     bash benchmarks/gpu.sh --dry-run    # environment and the commands only
#     GPU_SH_ALLOW_CPU=1 bash benchmarks/gpu.sh   # smoke test on CPU, tiny shapes
#
# What it does, in order, each step under its own time cap and all of them
# under one overall budget (GPU_SH_BUDGET seconds, default 450; a step that
# would start with less than 20 s left is skipped and reported as such):
#
# 1. Environment. Picks a Python (``$PYTHON``, else the first of python3,
#    python, /opt/torch/.venv/bin/python3 whose jax sees a GPU, else the first
#    with jax at all, else python3). If its jax has no GPU backend and
#    ``nvidia-smi -L`` lists a GPU (without one the script stops: it never
#    installs CUDA wheels on a machine without a GPU), it tries, unless
#    GPU_SH_INSTALL=0, ``pip install -e . "jax[cuda12]"`` (into that
#    interpreter's environment), then
#    ``pip install "jax[cuda12]"`` and ``pip install "jax[cuda13]"`` (machines
#    without internet access fail these quickly and the script stops, saying
#    so). jaxkl itself is always imported from this working tree (PYTHONPATH),
#    so nothing needs installing where jax with CUDA is already present. Its
#    runtime dependency chex (pyproject.toml) is checked up front: if missing,
#    it tries (unless GPU_SH_INSTALL=0 or --dry-run) ``pip install --no-deps
#    -e .`` and ``pip install chex`` (jax and jaxlib pinned to the versions
#    found); if chex still does not import, the script stops, saying so. It
#    then checks the imports each step needs (the top-level imports of each
#    test file, of tests/conftest.py and of local helpers, and of each
#    benchmark script): a step, or a test file, whose packages are missing is
#    skipped and reported (below). It prints the interpreter, the jax/jaxlib
#    versions, the plugin, the devices, what is missing and what it installed.
# 2. Tests on the GPU (JAX_PLATFORMS=cuda,cpu, overriding tests/conftest.py's
#    CPU default; float32 matmuls at 'highest' precision, as on CPU, set by
#    GPU_SH_TEST_MATMUL_PRECISION): tests/test_discrete.py tests/test_logits.py
#    tests/test_fused_linear.py tests/test_fused_vocab.py tests/test_topk.py
#    tests/test_fused_topk.py tests/test_rl_penalty.py tests/test_rl_sequence.py
#    tests/test_sharding.py (files that do not exist are left out; test_sharding.py runs its checks
#    in child processes on 8 virtual CPU devices, so it needs no second GPU),
#    ``-x -q``, with pytest-xdist workers if installed, capped at
#    GPU_SH_TEST_TIMEOUT seconds (default 170). Besides jax, jaxkl, numpy and
#    pytest, test_discrete.py needs hypothesis, mpmath, scipy and torch;
#    test_logits.py hypothesis and torch; test_fused_vocab.py hypothesis;
#    test_fused_linear.py and test_sharding.py nothing more. A file whose
#    imports are missing is left out (named, with the missing packages) and
#    the others run; without pytest the step is skipped. Without pytest-xdist
#    the tests run serially: the default cap becomes 240 s and the default
#    budget 520 s (a warning says how to rerun only the tests if the cap is
#    hit: GPU_SH_STEPS=tests with a larger GPU_SH_TEST_TIMEOUT).
# 3. benchmarks/bench_fused_linear.py --preset gpu: 8192 x 4096 x 128256,
#    bfloat16 inputs, forward KL, the materialized loss (float32 logits) against
#    the fused loss (chunk_size='auto', vocab_chunk='auto'), one fresh process
#    per variant, memory from jax.devices()[0].memory_stats()
#    ['peak_bytes_in_use'], times from a process alternating the two.
# 4. benchmarks/bench_kl_div.py and benchmarks/bench_distillation.py at 4096 x
#    128256 (jaxkl and optax on the GPU, PyTorch on the CPU; float32: these
#    scripts have no dtype flag). Both import optax and torch: without them
#    the step is skipped, saying so.
# 5. benchmarks/bench_fused_linear.py --grid small: N = 256, 1024, 4096 at
#    H=1024, V=32768, float32, fused against materialized (target <= 1.0).
# 6. One summary table, printed and written with the results:
#    benchmarks/results/{fused_linear,fused_linear_grid,kl_div,distillation,
#    summary}_gpu.{md,json} and tests_gpu.log.
#
# Exit status: 99 when it stops before the steps (a bad argument, no GPU,
# no jax, jaxkl or chex that does not import); otherwise the number of steps
# that failed, timed out or were skipped for lack of time (0: every step that
# could run ran). Steps and test files skipped because a package is missing
# are listed in the output and the summary ("skipped (missing: ...)") but not
# counted; targets missed are shown in the table, not counted either.
#
# Environment variables: PYTHON, GPU_SH_BUDGET, GPU_SH_TEST_TIMEOUT,
# GPU_SH_TESTS (test files, or 'none'), GPU_SH_PYTEST_ARGS (e.g. "-k fused"),
# GPU_SH_XDIST (pytest-xdist workers, 0 for none; default 8 where installed),
# GPU_SH_INSTALL (0: never pip install), GPU_SH_RESULTS_DIR,
# GPU_SH_FUSED_ARGS / GPU_SH_GRID_ARGS (extra arguments for the two
# bench_fused_linear.py runs, e.g. "--chunks 1024 --vocab-chunk none"),
# GPU_SH_DIVERGENCE (default forward; 'all' adds reverse and JSD),
# GPU_SH_STEPS (a subset of "tests fused_linear kl_div distillation
# fused_linear_grid", the default),
# GPU_SH_ALLOW_CPU=1 (run on the CPU with tiny shapes, results in
# /tmp/jaxkl_gpu_sh unless GPU_SH_RESULTS_DIR is set, no tests unless
# GPU_SH_TESTS names some).
#
# With the workplace's device tool (one command, files back only from $OUT):
#
#     set -o pipefail; bash benchmarks/gpu.sh 2>&1 | tee $OUT/gpu_log.txt;
#     tar -czf $OUT/results_gpu.tgz benchmarks/results/*_gpu.*

set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 99
ROOT=$(pwd)
START=$(date +%s)
BUDGET=${GPU_SH_BUDGET:-450}
DEADLINE=$((START + BUDGET))
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "gpu.sh: unknown argument $arg (--dry-run, --help)" >&2
      exit 99
      ;;
  esac
done

say() { printf '\n=== %s [%ss]\n' "$*" "$(($(date +%s) - START))"; }

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false # several processes share the GPU

# --------------------------------------------------------------------------- #
# 1. Environment
# --------------------------------------------------------------------------- #
say "environment"
probe() { # prints "jax_version backend" or fails
  timeout 180 "$1" - <<'EOF' 2>/dev/null
import jax
print(jax.__version__, jax.default_backend())
EOF
}

CANDIDATES=()
[ -n "${PYTHON:-}" ] && CANDIDATES+=("$PYTHON")
for c in python3 python /opt/torch/.venv/bin/python3; do
  command -v "$c" >/dev/null 2>&1 && CANDIDATES+=("$(command -v "$c")")
done
PY=""
PY_ANY_JAX=""
for c in "${CANDIDATES[@]}"; do
  out=$(probe "$c") || continue
  [ -z "$PY_ANY_JAX" ] && PY_ANY_JAX=$c
  case "$out" in *" gpu" | *" cuda")
    PY=$c
    break
    ;;
  esac
done
INSTALLED="nothing (jax with a GPU backend was already installed)"
ALLOW_CPU=${GPU_SH_ALLOW_CPU:-0}
HAVE_GPU=0
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU &&
  HAVE_GPU=1
if [ -z "$PY" ]; then
  PY=${PY_ANY_JAX:-${CANDIDATES[0]:-python3}}
  if [ "$ALLOW_CPU" = 1 ]; then
    INSTALLED="nothing (GPU_SH_ALLOW_CPU=1: running on the CPU)"
  elif [ "$HAVE_GPU" = 0 ]; then
    # Never install CUDA wheels into an environment on a machine without a GPU.
    echo "gpu.sh: no NVIDIA GPU (nvidia-smi -L lists none) and no jax with a" \
      "GPU backend; GPU_SH_ALLOW_CPU=1 runs a CPU smoke test" >&2
    exit 99
  elif [ "$DRY_RUN" = 1 ] || [ "${GPU_SH_INSTALL:-1}" = 0 ]; then
    INSTALLED="nothing (no jax with a GPU backend; install skipped)"
  else
    INSTALLED="FAILED: no jax with a GPU backend, and pip could not install one"
    for spec in '-e . jax[cuda12]' 'jax[cuda12]' 'jax[cuda13]'; do
      echo "no jax with a GPU backend in $PY: trying pip install $spec"
      # shellcheck disable=SC2086  # $spec holds several words on purpose
      if timeout 240 "$PY" -m pip install -q --retries 1 --timeout 20 $spec; then
        out=$(probe "$PY") || out=""
        case "$out" in *" gpu" | *" cuda")
          INSTALLED="pip install $spec"
          break
          ;;
        esac
      fi
    done
  fi
fi

# missing_modules ARG...: one line "mod<TAB>NAME<TAB>why" for each module ARG
# that $PY cannot import; for each ARG ending in .py, one line
# "file<TAB>ARG<TAB>missing modules" (space-separated, empty when none) from
# its top-level imports, those of the conftest.py files above it and of the
# local modules it imports (stdlib, jaxkl and local modules are not checked).
missing_modules() {
  timeout 300 "$PY" - "$ROOT" "$@" <<'EOF' 2>/dev/null
import ast, importlib, os, sys

root, args = sys.argv[1], sys.argv[2:]
stdlib = set(getattr(sys, "stdlib_module_names", ())) | {"__future__"}
why = {}

def check(name):
  if name not in why:
    try:
      importlib.import_module(name)
      why[name] = ""
    except BaseException as e:  # ImportError, or any error of a broken install
      msg = str(e).splitlines()[0] if str(e) else ""
      why[name] = f"{type(e).__name__}: {msg}"[:160] or "import failed"
  return why[name]

def imports(path, seen):
  if path in seen or not os.path.exists(path):
    return []
  seen.add(path)
  here = os.path.dirname(path)
  names = []
  for node in ast.parse(open(path, encoding="utf-8").read()).body:
    if isinstance(node, ast.Import):
      names += [a.name.split(".")[0] for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.append(node.module.split(".")[0])
  out = []
  for n in names:
    local = os.path.join(here, n + ".py")
    if os.path.exists(local):
      out += imports(local, seen)
    elif n not in stdlib and n != "jaxkl" and not os.path.exists(os.path.join(root, n)):
      out.append(n)
  return out

for arg in args:
  if arg.endswith(".py"):
    path = os.path.abspath(arg)
    seen = set()
    needed = imports(path, seen)
    d = os.path.dirname(path)
    while d.startswith(root):
      needed += imports(os.path.join(d, "conftest.py"), seen)
      if d == root:
        break
      d = os.path.dirname(d)
    missing = sorted({n for n in needed if check(n)})
    print(f"file\t{arg}\t{' '.join(missing)}", flush=True)
  elif check(arg):
    print(f"mod\t{arg}\t{why[arg]}", flush=True)
for name, w in sorted(why.items()):
  if w and name not in args:
    print(f"mod\t{name}\t{w}", flush=True)
EOF
}

# jaxkl's runtime dependency besides jax (pyproject.toml): chex. Without it
# `import jaxkl` fails, also where jax with CUDA needed no installing.
RUNTIME_MISSING=$(missing_modules chex)
if [ -n "$RUNTIME_MISSING" ]; then
  echo "jaxkl's runtime dependency chex does not import in $PY:" \
    "$(cut -f3 <<<"$RUNTIME_MISSING")"
  if [ "$DRY_RUN" = 1 ] || [ "${GPU_SH_INSTALL:-1}" = 0 ]; then
    echo "(not installing it: --dry-run or GPU_SH_INSTALL=0)"
  elif JAX_VERSIONS=$(timeout 180 "$PY" -c \
    'import jax, jaxlib; print(jax.__version__, jaxlib.__version__)' 2>/dev/null); then
    read -r JAXV JAXLIBV <<<"$JAX_VERSIONS"
    echo "trying pip install --no-deps -e . (jaxkl is imported from this tree" \
      "either way)"
    timeout 240 "$PY" -m pip install -q --retries 1 --timeout 20 --no-deps -e . ||
      echo "(pip install --no-deps -e . failed; not needed: PYTHONPATH has $ROOT)"
    echo "trying pip install chex jax==$JAXV jaxlib==$JAXLIBV (keeps this jax)"
    if timeout 240 "$PY" -m pip install -q --retries 1 --timeout 20 chex \
      "jax==$JAXV" "jaxlib==$JAXLIBV"; then
      case "$INSTALLED" in
        nothing*) INSTALLED="pip install chex" ;;
        *) INSTALLED="$INSTALLED; pip install chex" ;;
      esac
    fi
    RUNTIME_MISSING=$(missing_modules chex)
  fi
  if [ -n "$RUNTIME_MISSING" ] && [ "$DRY_RUN" != 1 ]; then
    echo "gpu.sh: jaxkl needs chex>=0.1.86 (pyproject.toml), which $PY cannot" \
      "import and pip could not install (no internet access, or" \
      "GPU_SH_INSTALL=0). Install chex and its dependencies (absl-py, toolz," \
      "typing-extensions) into that environment, e.g. from wheels with" \
      "'pip install --no-index --no-deps', or set PYTHON to an interpreter" \
      "that has them; stopping" >&2
    exit 99
  fi
fi
echo "python: $PY"
echo "installed by this script: $INSTALLED"
command -v nvidia-smi >/dev/null 2>&1 &&
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
ENV_INFO=$(
  timeout 180 "$PY" - <<'EOF'
import importlib.metadata as md, platform, sys
import jax, jaxlib
try:
  import jaxkl
except Exception as e:  # reported below; the script stops unless --dry-run
  print(f"JAXKL_ERROR={type(e).__name__}: {e}".splitlines()[0])
  jaxkl = None
plugins = sorted(
  f"{d.metadata['Name']} {d.version}" for d in md.distributions()
  if (d.metadata["Name"] or "").lower().startswith(("jax-cuda", "jax_cuda", "jax-rocm"))
)
platforms = ""
for name in ("cuda", "rocm"):
  try:
    jax.devices(name)
    platforms = f"{name},cpu"
    break
  except RuntimeError:
    pass
print(f"PLATFORMS={platforms}")
print(f"BACKEND={jax.default_backend()}")
print(f"python {platform.python_version()} ({sys.executable})", file=sys.stderr)
print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, plugins: "
      f"{', '.join(plugins) or 'none'}", file=sys.stderr)
if jaxkl is not None:
  print(f"jaxkl {jaxkl.__version__} from {jaxkl.__file__}", file=sys.stderr)
print(f"devices: {[f'{d} ({d.device_kind})' for d in jax.devices()]}",
      file=sys.stderr)
EOF
) || {
  echo "gpu.sh: $PY cannot import jax and jaxkl (see above); stopping" >&2
  exit 99
}
PLATFORMS=$(sed -n 's/^PLATFORMS=//p' <<<"$ENV_INFO")
BACKEND=$(sed -n 's/^BACKEND=//p' <<<"$ENV_INFO")
JAXKL_ERROR=$(sed -n 's/^JAXKL_ERROR=//p' <<<"$ENV_INFO")
if [ -n "$JAXKL_ERROR" ]; then
  if [ "$DRY_RUN" = 1 ]; then
    echo "(dry run) jaxkl does not import in $PY ($JAXKL_ERROR): a real run" \
      "stops here"
  else
    echo "gpu.sh: $PY cannot import jaxkl: $JAXKL_ERROR; stopping" >&2
    exit 99
  fi
fi
if [ "$BACKEND" != gpu ] && [ "$ALLOW_CPU" != 1 ]; then
  echo "gpu.sh: jax's backend is '$BACKEND', not gpu (installed: $INSTALLED)." >&2
  echo "Set GPU_SH_ALLOW_CPU=1 for a CPU smoke test with tiny shapes." >&2
  exit 99
fi

if [ "$BACKEND" = gpu ]; then
  export JAX_PLATFORMS=${PLATFORMS:-cuda,cpu}
  TINY=0
  SUFFIX=gpu
  RESULTS=${GPU_SH_RESULTS_DIR:-benchmarks/results}
  DEFAULT_TESTS="tests/test_discrete.py tests/test_logits.py \
tests/test_fused_linear.py tests/test_fused_vocab.py tests/test_topk.py \
tests/test_fused_topk.py tests/test_rl_penalty.py tests/test_rl_sequence.py \
tests/test_sharding.py"
else
  export JAX_PLATFORMS=cpu
  TINY=1
  SUFFIX=cputiny
  RESULTS=${GPU_SH_RESULTS_DIR:-/tmp/jaxkl_gpu_sh}
  DEFAULT_TESTS=none
fi
mkdir -p "$RESULTS"
echo "JAX_PLATFORMS=$JAX_PLATFORMS; results in $RESULTS/*_$SUFFIX.*;" \
  "budget ${BUDGET}s"

# What each step imports, checked before anything runs: test files and
# benchmark scripts whose packages are missing are skipped (not failed).
STEPS=" ${GPU_SH_STEPS:-tests fused_linear kl_div distillation fused_linear_grid} "
wanted() { [[ "$STEPS" == *" $1 "* ]]; }
TESTS=${GPU_SH_TESTS:-$DEFAULT_TESTS}
FILES=()
if [ "$TESTS" != none ] && wanted tests; then
  for f in $TESTS; do
    if [ -e "$f" ]; then FILES+=("$f"); else echo "(no $f: left out)"; fi
  done
fi
declare -A NEEDS=()        # file -> its missing modules ("" when none)
declare -A STEP_MISSING=() # step -> why it is skipped ("" when it can run)
XDIST_OK=0
say "dependencies"
DEPS=$(missing_modules xdist "${FILES[@]}" benchmarks/bench_fused_linear.py \
  benchmarks/bench_kl_div.py benchmarks/bench_distillation.py) ||
  echo "WARNING: the import check failed or timed out; steps run regardless"
while IFS=$'\t' read -r kind name what; do
  case "$kind" in
    file) NEEDS[$name]=$what ;;
    mod) echo "missing in $PY: $name ($what)" ;;
  esac
done <<<"$DEPS"
grep -q $'^mod\txdist\t' <<<"$DEPS" || XDIST_OK=1
for pair in fused_linear:bench_fused_linear kl_div:bench_kl_div \
  distillation:bench_distillation fused_linear_grid:bench_fused_linear; do
  miss=${NEEDS[benchmarks/${pair#*:}.py]-}
  [ -n "$miss" ] && STEP_MISSING[${pair%%:*}]="no ${miss// /, } in $PY"
done
RUN_FILES=()
SKIPPED_FILES=()
for f in "${FILES[@]}"; do
  miss=${NEEDS[$f]-}
  if [ -n "$miss" ]; then
    SKIPPED_FILES+=("$(basename "$f") (no ${miss// /, })")
  else
    RUN_FILES+=("$f")
  fi
done
TESTS_NOTE=""
if [ "${#SKIPPED_FILES[@]}" -gt 0 ]; then
  TESTS_NOTE="left out, imports missing in $PY: $(printf '%s; ' "${SKIPPED_FILES[@]}")"
  TESTS_NOTE=${TESTS_NOTE%; }
  echo "test files $TESTS_NOTE"
fi
if [ "$TESTS" != none ] && wanted tests && [ "${#RUN_FILES[@]}" = 0 ]; then
  STEP_MISSING[tests]="no test file can run: ${TESTS_NOTE:-none of $TESTS exists}"
fi
for name in "${!STEP_MISSING[@]}"; do
  wanted "$name" && echo "step $name will be skipped: ${STEP_MISSING[$name]}"
done
grep -q '^mod' <<<"$DEPS" || echo "(all imports available)"

# --------------------------------------------------------------------------- #
# Steps
# --------------------------------------------------------------------------- #
STATUS_FILE=$(mktemp)
# step NAME CAP_SECONDS COMMAND...: runs COMMAND under min(CAP, what is left
# of the budget - 20 s); records "NAME rc seconds [note]" in $STATUS_FILE (rc
# 'missing': skipped, a package missing, note says which; 'skipped': out of
# time). The note is ${STEP_MISSING[NAME]}, else $STEP_NOTE.
STEP_NOTE=""
step() {
  local name=$1 cap=$2
  shift 2
  wanted "$name" || return 0
  local left=$((DEADLINE - $(date +%s) - 20))
  local limit=$((cap < left ? cap : left))
  say "$name (cap ${limit}s)"
  echo "+ $*"
  if [ -n "${STEP_MISSING[$name]-}" ]; then
    echo "SKIPPED: ${STEP_MISSING[$name]} (not counted as a failure)"
    echo "$name missing 0 ${STEP_MISSING[$name]}" >>"$STATUS_FILE"
    return 0
  fi
  if [ "$DRY_RUN" = 1 ]; then
    echo "$name dry-run 0" >>"$STATUS_FILE"
    return 0
  fi
  if [ "$limit" -lt 20 ]; then
    echo "SKIPPED: out of time"
    echo "$name skipped 0" >>"$STATUS_FILE"
    return 0
  fi
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "$name $rc $(($(date +%s) - t0))${STEP_NOTE:+ $STEP_NOTE}" >>"$STATUS_FILE"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "TIMED OUT after ${limit}s"
  fi
  return 0
}

# Extra arguments from the environment, split like a shell command line (so
# that GPU_SH_PYTEST_ARGS="-k 'fused and not slow'" keeps its quotes).
eval "PYTEST_EXTRA=(${GPU_SH_PYTEST_ARGS:-})"
eval "FUSED_EXTRA=(${GPU_SH_FUSED_ARGS:-})"
eval "GRID_EXTRA=(${GPU_SH_GRID_ARGS:-})"

# 2. Tests (only the files whose imports are available: see "dependencies").
if [ "$TESTS" != none ]; then
  XDIST=()
  TEST_CAP=${GPU_SH_TEST_TIMEOUT:-170}
  workers=${GPU_SH_XDIST:-$([ "$TINY" = 1 ] && echo 0 || echo 8)}
  if [ "$workers" != 0 ] && [ "$XDIST_OK" = 1 ]; then
    XDIST=(-n "$workers")
  elif [ "$workers" != 0 ] && wanted tests && [ -z "${STEP_MISSING[tests]-}" ]; then
    # Serial tests take longer: raise the defaults (not what the user set).
    [ -z "${GPU_SH_TEST_TIMEOUT:-}" ] && TEST_CAP=240
    if [ -z "${GPU_SH_BUDGET:-}" ]; then
      BUDGET=$((BUDGET + 70))
      DEADLINE=$((START + BUDGET))
    fi
    echo "WARNING: pytest-xdist is not installed in $PY: the tests run" \
      "serially, capped at ${TEST_CAP}s (budget now ${BUDGET}s), and may hit" \
      "the cap. To rerun only the tests with more time:" \
      "GPU_SH_STEPS=tests GPU_SH_TEST_TIMEOUT=540 GPU_SH_BUDGET=580" \
      "bash benchmarks/gpu.sh"
  fi
  STEP_NOTE=$TESTS_NOTE
  step tests "$TEST_CAP" \
    env JAX_DEFAULT_MATMUL_PRECISION="${GPU_SH_TEST_MATMUL_PRECISION:-highest}" \
    bash -c 'set -o pipefail; "$@" 2>&1 | tee "'"$RESULTS/tests_$SUFFIX.log"'"' _ \
    "$PY" -m pytest -x -q -p no:cacheprovider "${XDIST[@]}" "${RUN_FILES[@]}" \
    "${PYTEST_EXTRA[@]}"
  STEP_NOTE=""
fi

# 3.-5. Benchmarks.
DIV=${GPU_SH_DIVERGENCE:-forward}
if [ "$TINY" = 1 ]; then
  FUSED_SHAPE=(--tokens 256 --hidden 64 --vocab 4096 --dtype bfloat16 --steps 2
    --interleaved-steps 2)
  GRID_SHAPE=(--grid-tokens 64 128 --hidden 64 --vocab 4096 --grid-steps 2)
  LOGITS_SHAPE=(--batch 64 --classes 1000 --repeats 3)
  DISTILL_SHAPE=("${LOGITS_SHAPE[@]}")
else
  FUSED_SHAPE=(--preset gpu --steps 10 --interleaved-steps 10)
  GRID_SHAPE=(--grid-steps 10)
  LOGITS_SHAPE=(--batch 4096 --classes 128256 --repeats 6)
  # PyTorch's CPU fwd+bwd takes seconds per call at this size: fewer repeats.
  DISTILL_SHAPE=(--batch 4096 --classes 128256 --repeats 3)
fi
# shellcheck disable=SC2086  # $DIV may be several words
step fused_linear 150 "$PY" benchmarks/bench_fused_linear.py "${FUSED_SHAPE[@]}" \
  --divergence $DIV "${FUSED_EXTRA[@]}" \
  --output "$RESULTS/fused_linear_$SUFFIX.md"
step kl_div 60 "$PY" benchmarks/bench_kl_div.py "${LOGITS_SHAPE[@]}" \
  --output "$RESULTS/kl_div_$SUFFIX.md"
step distillation 75 "$PY" benchmarks/bench_distillation.py "${DISTILL_SHAPE[@]}" \
  --torch-threads "$(nproc)" --output "$RESULTS/distillation_$SUFFIX.md"
step fused_linear_grid 90 "$PY" benchmarks/bench_fused_linear.py --grid small \
  "${GRID_SHAPE[@]}" "${GRID_EXTRA[@]}" \
  --output "$RESULTS/fused_linear_grid_$SUFFIX.md"

# --------------------------------------------------------------------------- #
# 6. Summary
# --------------------------------------------------------------------------- #
say "summary"
[ "$DRY_RUN" = 1 ] && {
  echo "(dry run: nothing ran)"
  exit 0
}
"$PY" - "$RESULTS" "$SUFFIX" "$STATUS_FILE" "$START" "$INSTALLED" "$PY" <<'EOF'
import json, os, sys

results, suffix, status_file, start, installed, python = sys.argv[1:7]
steps = {}
notes = {}  # why a step was skipped (rc 'missing'), or which test files were
for line in open(status_file, encoding="utf-8"):
  name, rc, seconds, *note = line.split(maxsplit=3)
  steps[name] = (rc, int(seconds))
  if note:
    notes[name] = note[0].strip()


def load(stem):
  path = os.path.join(results, f"{stem}_{suffix}.json")
  if not os.path.exists(path) or os.path.getmtime(path) < float(start):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def state(name):
  if name not in steps:
    return "not run"
  rc, seconds = steps[name]
  note = f"; {notes[name]}" if name in notes else ""
  if rc == "missing":
    return f"skipped (missing: {notes.get(name, '?')})"
  if rc == "skipped":
    return "skipped (out of time)"
  if rc in ("124", "137"):
    return f"TIMED OUT ({seconds} s){note}"
  return f"exit {rc} ({seconds} s){note}"


rows = []  # benchmark, problem, measure, jaxkl, reference, ratio, target, result


def verdict(value, target, op="<="):
  if target is None:
    return ""
  ok = value <= target if op == "<=" else value >= target
  return "PASS" if ok else "FAIL"


if "tests" in steps and steps["tests"][0] == "missing":
  rows.append(("tests", "pytest -x", state("tests"), "", "", "", "", "skipped"))
elif "tests" in steps:
  tail = ""
  log = os.path.join(results, f"tests_{suffix}.log")
  if os.path.exists(log):
    lines = [l for l in open(log, encoding="utf-8").read().splitlines() if l.strip()]
    tail = lines[-1] if lines else ""
  ok = steps["tests"][0] == "0"
  rows.append(("tests", "pytest -x", state("tests"), tail, "", "", "",
                "PASS" if ok else "FAIL"))

fused = load("fused_linear")
if fused is None:
  rows.append(("fused_linear", "", state("fused_linear"), "", "", "", "", "no result"))
else:
  p = fused["problem"]
  shape = f"{p['tokens']}x{p['hidden']}x{p['vocab']} {p['dtype']}"
  for div, sec in fused["by_divergence"].items():
    rs = {r["variant"]: r for r in sec["rows"] if "error" not in r}
    base, fu = rs.get("baseline"), rs.get("fused")
    inter = (sec.get("interleaved") or {}).get("interleaved")
    if fu:
      rows_, block = (fu.get(f"resolved_{k}", fu[k]) for k in ("chunk", "vocab_chunk"))
      div = f"{div}, chunk {rows_}, vocab chunk {'none' if block is None else block}"
    if inter:
      b, f = inter["baseline"]["median_s"], inter["fused"]["median_s"]
      rows.append(("fused_linear", f"{shape} {div}", "step ms (alternating)",
                   f"{1e3 * f:.1f}", f"{1e3 * b:.1f} materialized", f"{f / b:.3f}",
                   f"<= {p['time_target']}", verdict(f / b, p["time_target"])))
    if base and fu:
      rows.append(("fused_linear", f"{shape} {div}", f"peak MiB ({fu['memory_source']})",
                   f"{fu['peak_mib']:.0f}", f"{base['peak_mib']:.0f} materialized",
                   f"{fu['peak_mib'] / base['peak_mib']:.3f}", "", ""))
      r = fu["working_set_mib"] / base["working_set_mib"]
      rows.append(("fused_linear", f"{shape} {div}", "working set MiB",
                   f"{fu['working_set_mib']:.0f}",
                   f"{base['working_set_mib']:.0f} materialized",
                   f"{r:.3f}", f"<= {p['memory_target']}",
                   verdict(r, p["memory_target"])))
    for r in sec["rows"]:
      if "error" in r:
        rows.append(("fused_linear", f"{shape} {div}", r["variant"], "", "", "", "",
                     "failed: " + r["error"][:80]))
  rows.append(("fused_linear", "Liger-Kernel, published (H100, BT=8192, "
               "V=128256)", "vs torch", "3.5x faster, 84% less memory", "",
               "time 0.286, memory 0.16", "", ""))

for stem in ("kl_div", "distillation"):
  data = load(stem)
  if data is None:
    rows.append((stem, "", state(stem), "", "", "", "", "no result"))
    continue
  p = data["problem"]
  shape = f"{p['batch']}x{p['classes']} {p['dtype']}"
  res = data["results_ms"]
  for mode in ("fwd", "fwdbwd"):
    j = res["jaxkl"][mode]["min"]
    refs = ", ".join(f"{k} {v[mode]['min']:.2f}" for k, v in res.items() if k != "jaxkl")
    rows.append((stem, shape, f"{mode} ms (best)", f"{j:.2f}", refs, "", "", ""))
  for r in data["ratios"]:
    target = r.get("target")
    rows.append((stem, shape, r["name"], "", "", f"{r['value']:.2f}",
                 "" if target is None else f"{r['op']} {target:g} (CPU target)",
                 "" if target is None else ("PASS" if r["pass"] else "FAIL")))

grid = load("fused_linear_grid")
if grid is None:
  rows.append(("fused_linear_grid", "", state("fused_linear_grid"), "", "", "", "",
               "no result"))
else:
  p = grid["problem"]
  for div, sec in grid["by_divergence"].items():
    for r in sec["rows"]:
      shape = f"{r['tokens']}x{p['hidden']}x{p['vocab']} {p['dtype']} {div}"
      if "error" in r:
        rows.append(("fused_linear_grid", shape, "", "", "", "", "",
                     "failed: " + r["error"][:80]))
        continue
      t = r["interleaved"]
      rows.append(("fused_linear_grid", shape, "step ms (alternating)",
                   f"{1e3 * t['fused']['median_s']:.2f}",
                   f"{1e3 * t['baseline']['median_s']:.2f} materialized",
                   f"{r['ratio']:.3f}", f"<= {r['target']:g}",
                   "PASS" if r["pass"] else "FAIL"))

head = ("benchmark", "problem", "measure", "jaxkl", "reference", "ratio", "target",
        "result")
md = ["# jaxkl on a GPU: summary of benchmarks/gpu.sh", ""]
env = (fused or grid or {}).get("environment", {})
md += [f"- python: {python}; installed by gpu.sh: {installed}"]
md += ["- kl_div, distillation: jaxkl and optax on the default JAX device, "
       "PyTorch on the CPU; their targets were set for the CPU"]
md += [f"- {k}: {env[k]}" for k in ("date", "jax", "jaxlib", "jaxkl", "device_kind",
                                    "jax.devices()") if k in env]
md += [f"- {name}: {state(name)}" for name in steps]
md += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
md += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
text = "\n".join(md) + "\n"
print(text)
path = os.path.join(results, f"summary_{suffix}.md")
with open(path, "w", encoding="utf-8") as f:
  f.write(text)
with open(os.path.join(results, f"summary_{suffix}.json"), "w", encoding="utf-8") as f:
  json.dump({"steps": steps, "rows": [dict(zip(head, row)) for row in rows],
             "notes": notes, "python": python, "installed": installed,
             "environment": env}, f,
            indent=2)
print(f"wrote {path} and summary_{suffix}.json")

# Failed steps: tests that did not pass; benchmarks that left no fresh result
# (a benchmark that ran but missed a target is not counted).
fresh = {"fused_linear": fused, "fused_linear_grid": grid}
fresh.update({stem: load(stem) for stem in ("kl_div", "distillation")})
failed = [
  name
  for name, (rc, _) in steps.items()
  if rc not in ("0", "missing") and (name == "tests" or fresh.get(name) is None)
]
missing = [f"{name} ({notes.get(name, '?')})" for name, (rc, _) in steps.items()
           if rc == "missing"]
if "tests" in notes and steps["tests"][0] != "missing":
  missing.append(f"test files {notes['tests']}")
print(f"skipped, packages missing (not counted): {'; '.join(missing) or 'none'}")
print(f"failed, timed out or out of time (counted): {', '.join(failed) or 'none'}")
sys.exit(len(failed))
EOF
FAILED=$?
rm -f "$STATUS_FILE"
say "done: $FAILED step(s) failed, timed out or skipped for lack of time"
exit "$FAILED"
