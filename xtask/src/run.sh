#!/usr/bin/env bash
# gpu-bin/run.sh: runs l4lab's packed test and bench binaries on the GPU machine.
# Written by `cargo xtask gpu-pack` from xtask/src/run.sh (edit that file, not the copy).
#
# Usage, from the repository root (the binaries read fixtures relative to it):
#   bash gpu-bin/run.sh
#   L4_REQUIRE_GPU=0 OUT=/tmp/dry bash gpu-bin/run.sh        # dry run on a machine without a GPU
#   L4_SANITIZE=memcheck L4_SANITIZE_BIN=lib-l4_kernels bash gpu-bin/run.sh
#
# The executables arrive as gpu-bin/executables.tar.gz and are unpacked next to it first.
#
# What a normal run does, in order (each step's log goes to $OUT/<step>.log):
#   1. env.txt: host, driver, GPU, which libnvrtc is loaded, compute-sanitizer, python/torch;
#   2. `l4 info`, then every test binary (gpu-bin/lib-*, test-*, bin-*), one at a time;
#   3. every criterion bench binary (gpu-bin/bench-*), results under $OUT/criterion;
#   4. the end-to-end bench: `l4 bench --model llama4-scout-slice --device cuda --dtype bf16
#      --prompt-len 512 --new-tokens 32 --repeats 3` ($OUT/e2e.log), when `l4 info --model
#      llama4-scout-slice` knows the preset (otherwise noted, not a failure);
#   5. the PyTorch peer baselines (gpu-bin/peer_baselines.py, $OUT/peers.json), when a python
#      with torch is found;
#   6. the summary: gpu-bin/gpu_summary.py writes $OUT/summary.md (l4's bench table with
#      throughput, fraction of the card's peak and the l4/peer ratio; the peers; the e2e lines;
#      the PASS/FAIL lines) and it is printed LAST. Without python, $OUT/summary.txt is printed.
#   docs/benchmarks.md says what each bench measures and how to read the table.
#
# Settings (environment):
#   OUT=DIR            where every log and result goes (default: gpu-out)
#   L4_REQUIRE_GPU=0   dry run without a GPU: GPU tests and benches skip instead of failing, and
#                      the e2e bench is skipped when nvidia-smi sees no GPU (default 1)
#   L4_SKIP_TESTS=1    skip step 2 (the test binaries)
#   L4_TEST_FILTER=... a test-name filter passed to every test binary (and to the sanitized one)
#   L4_SKIP_BENCHES=1  skip step 3 (the criterion benches)
#   L4_BENCH_ARGS=...  criterion arguments for every bench binary (default: "--quick
#                      --measurement-time 2": criterion's quick mode, at most ~2 s of wall time
#                      per entry, sized so the GPU benches take a few minutes at most). Set it empty
#                      for criterion's full defaults (much slower); a trailing word is a filter,
#                      e.g. "--quick cuda" runs only the GPU entries
#   L4_SKIP_E2E=1      skip step 4
#   L4_E2E_MODEL=NAME  the model of step 4 (default llama4-scout-slice)
#   L4_E2E_TIMEOUT=S   seconds step 4 may run (default 180; also capped by the time budget)
#   L4_SKIP_PEERS=1    skip step 5
#   L4_PEERS_BUDGET=S  seconds the peer baselines aim to finish in (default 60)
#   L4_TIME_BUDGET=S   the run's time budget in seconds (default 450): steps 4 and 5 are
#                      shortened or skipped (with a note) so the summary comes before it ends;
#                      the tests and benches are never cut short by it
#   L4_BIN_TIMEOUT=S   seconds one test or bench binary may run before it is killed and counted
#                      as failed (default 600), so one hang cannot eat the whole GPU window
#   L4_KERNEL_CACHE=D  NVRTC's CUBIN cache (default: $OUT/kernel-cache, a fresh compile per run)
#   PYTHON=...         the Python whose nvidia/cu13 wheel provides NVRTC (default: python3); it
#                      is also tried first for the peers (which need torch) and the summary
#   Sanitizer mode (runs one test binary under compute-sanitizer, then exits: no other tests,
#   no benches, no e2e, no peers):
#   L4_SANITIZE=memcheck|racecheck   the compute-sanitizer tool (--tool memcheck|racecheck,
#                      --error-exitcode 1); compute-sanitizer is taken from PATH, else
#                      /usr/local/cuda/bin, else /usr/local/cuda-*/bin; a missing one is a FAIL
#   L4_SANITIZE_BIN=NAME the test binary in gpu-bin/ to run (e.g. lib-l4_kernels); required
#   L4_SMALL_SHAPES=1  exported in sanitizer mode (tests may shrink their shapes, since the
#                      sanitizers slow kernels down 10-100x); L4_TEST_FILTER narrows the tests;
#                      the log is $OUT/sanitize-<tool>-<binary>.log; L4_BIN_TIMEOUT applies
# Exit status: 0 when every step that ran passed, 1 otherwise (a test or bench binary failed, an
# e2e bench of an existing preset failed, the peer script crashed, or the sanitizer found errors).

set -u -o pipefail
shopt -s nullglob

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
bin_dir=gpu-bin
# gpu-pack ships the executables as one tarball (the carry to the GPU machine is capped).
if [ -f "$bin_dir/executables.tar.gz" ]; then
  tar -xzf "$bin_dir/executables.tar.gz" -C "$bin_dir" || { echo "cannot unpack $bin_dir/executables.tar.gz"; exit 2; }
fi
out=${OUT:-gpu-out}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
summary="$out/summary.txt"
: >"$summary"
run_start=$(date +%s)
budget=${L4_TIME_BUDGET:-450}
note() { printf '%s\n' "$*" | tee -a "$summary"; }
join_colon() { local IFS=:; printf '%s' "$*"; }
# A script packed beside this one, else the repository's copy in tools/.
tool_path() {
  if [ -f "$bin_dir/$1" ]; then
    printf '%s' "$root/$bin_dir/$1"
  elif [ -f "tools/$1" ]; then
    printf '%s' "$root/tools/$1"
  fi
}

# NVRTC 13.0: torch's nvidia/cu13 wheel first (the build CI checks with), then the toolkit.
# libnvrtc.so.13 (13.0) dlopens its builtins by bare name, so its directory must be on
# LD_LIBRARY_PATH before the test process starts. Never add a stubs directory: cudarc would load
# the stub libcuda.so instead of the driver.
python=${PYTHON:-python3}
pycu13=$("$python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))' 2>/dev/null || true)
candidates=(/usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64)
if [ -n "$pycu13" ]; then candidates=("$pycu13/lib" "${candidates[@]}"); fi
nvrtc_dirs=()
for d in "${candidates[@]}"; do
  case "$d" in *stubs*) continue ;; esac
  if [ -e "$d/libnvrtc.so.13" ]; then nvrtc_dirs+=("$d"); fi
done
kept=()
IFS=: read -r -a existing <<<"${LD_LIBRARY_PATH:-}"
for d in "${existing[@]}"; do
  case "$d" in "" | *stubs*) ;; *) kept+=("$d") ;; esac
done
LD_LIBRARY_PATH=$(join_colon "${nvrtc_dirs[@]}" "${kept[@]}")
export LD_LIBRARY_PATH

export L4_REQUIRE_GPU=${L4_REQUIRE_GPU-1}
# The CLI tests run this binary instead of the build machine's path baked into them.
if [ -x "$bin_dir/l4" ]; then export L4_BIN="$root/$bin_dir/l4"; fi
# A fresh kernel cache inside the output folder: every run compiles with this machine's NVRTC.
export L4_KERNEL_CACHE=${L4_KERNEL_CACHE:-$out/kernel-cache}

# Pythons: any python3 for the summary (standard library only); one that has torch for the peers.
summary_python=
for p in "$python" python3; do
  if command -v "$p" >/dev/null 2>&1; then summary_python=$p && break; fi
done
torch_python=
torch_candidates=("$python")
if [ "$python" != python3 ]; then torch_candidates+=(python3); fi
torch_candidates+=(/opt/torch/.venv/bin/python)
for p in "${torch_candidates[@]}"; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)' 2>/dev/null; then
    torch_python=$p && break
  fi
done

# compute-sanitizer: PATH, then the toolkit's usual places.
sanitizer=$(command -v compute-sanitizer 2>/dev/null || true)
if [ -z "$sanitizer" ]; then
  for s in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer; do
    if [ -x "$s" ]; then sanitizer=$s && break; fi
  done
fi

have_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then have_gpu=1; fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -a)"
  echo "glibc: $(ldd --version 2>&1 | head -n 1)"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "L4_REQUIRE_GPU=$L4_REQUIRE_GPU"
  echo "python nvidia/cu13: ${pycu13:-none}"
  if [ ${#nvrtc_dirs[@]} -eq 0 ]; then echo "libnvrtc.so.13: NOT FOUND"; fi
  for d in "${nvrtc_dirs[@]}"; do echo "libnvrtc.so.13: $(readlink -f "$d/libnvrtc.so.13")"; done
  for d in "${nvrtc_dirs[@]}"; do if [ -e "$d/libnvrtc.so" ]; then echo "libnvrtc.so (tried first by cudarc): $(readlink -f "$d/libnvrtc.so")"; fi; done
  echo "compute-sanitizer: ${sanitizer:-not found}"
  echo "python for the summary: ${summary_python:-none}; python with torch: ${torch_python:-none}"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,power.limit,clocks.max.sm --format=csv
  else
    echo "nvidia-smi: not found"
  fi
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
if [ ${#nvrtc_dirs[@]} -eq 0 ]; then
  note "WARNING: no libnvrtc.so.13 found; kernel tests cannot compile their kernels"
fi

failed=0
bin_timeout=${L4_BIN_TIMEOUT:-600}
last_status=0
last_seconds=0
run_limited() { # seconds, name, command...: runs the command under a time limit, tees its output to $out/name.log
  local seconds=$1 name=$2
  shift 2
  local start=$SECONDS
  local limit=()
  if command -v timeout >/dev/null 2>&1; then limit=(timeout --kill-after=10 "$seconds"); fi
  echo "=== $name"
  "${limit[@]}" "$@" 2>&1 | tee "$out/$name.log"
  last_status=${PIPESTATUS[0]}
  last_seconds=$((SECONDS - start))
  if [ "$last_status" -eq 124 ] || [ "$last_status" -eq 137 ]; then
    echo "(killed after ${seconds}s)" | tee -a "$out/$name.log"
  fi
}
run_logged() { run_limited "$bin_timeout" "$@"; }
test_filter=()
if [ -n "${L4_TEST_FILTER:-}" ]; then test_filter=("$L4_TEST_FILTER"); fi

# Prints the Markdown summary (summary.txt without python, or in sanitizer mode) last, and exits.
finish() {
  if [ "$failed" -ne 0 ]; then
    note "RESULT: some steps FAILED; logs in $out (${SECONDS}s)"
  else
    note "RESULT: all passed; logs in $out (${SECONDS}s)"
  fi
  local summary_py
  summary_py=$(tool_path gpu_summary.py)
  echo
  if [ -n "${L4_SANITIZE:-}" ]; then
    echo "=== summary ($summary)"
    cat "$summary"
  elif [ -n "$summary_python" ] && [ -n "$summary_py" ] &&
    "$summary_python" "$summary_py" --out "$out" --since "$run_start" >"$out/summary-print.log" 2>&1 &&
    [ -s "$out/summary.md" ]; then
    cat "$out/summary.md"
  else
    echo "(no Markdown summary: ${summary_python:-no python3}, ${summary_py:-no gpu_summary.py}; $(tail -n 1 "$out/summary-print.log" 2>/dev/null))"
    echo "=== summary ($summary)"
    cat "$summary"
  fi
  if [ "$failed" -ne 0 ]; then exit 1; fi
  exit 0
}

# Sanitizer mode: one test binary under compute-sanitizer, then the summary.
if [ -n "${L4_SANITIZE:-}" ]; then
  tool=$L4_SANITIZE
  target=${L4_SANITIZE_BIN:-}
  case "$tool" in
  memcheck | racecheck) ;;
  *)
    note "FAIL sanitizer: L4_SANITIZE must be memcheck or racecheck, not '$tool'"
    failed=1
    finish
    ;;
  esac
  if [ -z "$sanitizer" ]; then
    note "FAIL sanitizer: compute-sanitizer not found (PATH, /usr/local/cuda/bin, /usr/local/cuda-*/bin)"
    failed=1
    finish
  fi
  if [ -z "$target" ] || [ ! -x "$bin_dir/$target" ] || [ "${target#bench-}" != "$target" ]; then
    names=$(cd "$bin_dir" 2>/dev/null && printf '%s ' lib-* test-* bin-*)
    note "FAIL sanitizer: L4_SANITIZE_BIN must name a test binary in $bin_dir/ (got '${target}'; have: ${names:-none})"
    failed=1
    finish
  fi
  export L4_SMALL_SHAPES=1
  name="sanitize-$tool-$target"
  note "sanitizer: $sanitizer --tool $tool on $target${L4_TEST_FILTER:+ (filter: $L4_TEST_FILTER)}, L4_SMALL_SHAPES=1"
  run_logged "$name" "$sanitizer" --tool "$tool" --error-exitcode 1 "$bin_dir/$target" --test-threads=1 "${test_filter[@]}"
  result=$(grep -E '^test result:' "$out/$name.log" | tail -n 1)
  errors=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$name.log" | tail -n 1)
  if [ "$last_status" -eq 0 ]; then
    note "PASS $name (${last_seconds}s): $result ${errors}"
  else
    note "FAIL $name (exit $last_status, ${last_seconds}s): $result ${errors}"
    grep -E '^test .* \.\.\. FAILED$' "$out/$name.log" | sed 's/^/    /' | tee -a "$summary"
    # The sanitizer's first reports (each starts with "========= ").
    grep -E '^========= ' "$out/$name.log" | head -n 40 | sed 's/^/    /' | tee -a "$summary"
    failed=1
  fi
  finish
fi

if [ -x "$bin_dir/l4" ]; then
  run_logged l4-info "$bin_dir/l4" info
  if [ "$last_status" -eq 0 ]; then note "PASS l4 info (${last_seconds}s)"; else note "FAIL l4 info (exit $last_status)"; failed=1; fi
fi

if [ "${L4_SKIP_TESTS:-0}" = 1 ]; then
  note "tests skipped (L4_SKIP_TESTS=1)"
else
  tests=("$bin_dir"/lib-* "$bin_dir"/test-* "$bin_dir"/bin-*)
  for b in "${tests[@]}"; do
    name=$(basename "$b")
    run_logged "$name" "$b" --test-threads=1 "${test_filter[@]}"
    result=$(grep -E '^test result:' "$out/$name.log" | tail -n 1)
    if [ "$last_status" -eq 0 ]; then
      note "PASS $name (${last_seconds}s): $result"
    else
      note "FAIL $name (exit $last_status, ${last_seconds}s): $result"
      grep -E '^test .* \.\.\. FAILED$' "$out/$name.log" | sed 's/^/    /' | tee -a "$summary"
      failed=1
    fi
  done
fi

if [ "${L4_SKIP_BENCHES:-0}" = 1 ]; then
  note "benches skipped (L4_SKIP_BENCHES=1)"
else
  bench_args=${L4_BENCH_ARGS-"--quick --measurement-time 2"}
  for b in "$bin_dir"/bench-*; do
    name=$(basename "$b")
    # shellcheck disable=SC2086 # bench_args is a list of arguments
    run_logged "$name" env CRITERION_HOME="$out/criterion" "$b" --bench --noplot $bench_args
    entries=$(grep -cE '^Benchmarking .*: Analyzing$' "$out/$name.log")
    if [ "$last_status" -eq 0 ]; then
      note "PASS $name (${last_seconds}s, $entries entries)"
    else
      note "FAIL $name (exit $last_status, ${last_seconds}s, $entries entries)"
      grep -E '^BENCH FAILED ' "$out/$name.log" | sort -u | sed 's/^/    /' | tee -a "$summary"
      failed=1
    fi
  done
fi

# Step 4: the end-to-end bench.
e2e_model=${L4_E2E_MODEL:-llama4-scout-slice}
if [ "${L4_SKIP_E2E:-0}" = 1 ]; then
  note "e2e bench: skipped (L4_SKIP_E2E=1)"
elif [ ! -x "$bin_dir/l4" ]; then
  note "e2e bench: no l4 binary in $bin_dir/"
elif ! "$bin_dir/l4" info --model "$e2e_model" >"$out/e2e-info.log" 2>&1; then
  note "e2e bench: preset not available ($e2e_model: $(tail -n 1 "$out/e2e-info.log")); not counted as a failure"
elif [ "$have_gpu" -eq 0 ] && [ "$L4_REQUIRE_GPU" != 1 ]; then
  note "e2e bench: skipped, no GPU visible (dry run, L4_REQUIRE_GPU=$L4_REQUIRE_GPU)"
else
  left=$((budget - SECONDS - 30))
  e2e_timeout=${L4_E2E_TIMEOUT:-180}
  if [ "$left" -lt "$e2e_timeout" ]; then e2e_timeout=$left; fi
  if [ "$e2e_timeout" -lt 30 ]; then
    note "e2e bench: SKIPPED, only $((budget - SECONDS))s of the ${budget}s time budget left"
  else
    run_limited "$e2e_timeout" e2e "$bin_dir/l4" bench --model "$e2e_model" --device cuda --dtype bf16 \
      --prompt-len 512 --new-tokens 32 --repeats 3
    timings=$(grep -E '^(prefill|generate)_seconds=' "$out/e2e.log" | tr '\n' ' ')
    if [ "$last_status" -eq 0 ]; then
      note "PASS e2e bench $e2e_model cuda bf16, prompt 512 + 32 new, 3 repeats (${last_seconds}s): $timings"
    else
      note "FAIL e2e bench $e2e_model (exit $last_status, ${last_seconds}s): $(tail -n 1 "$out/e2e.log")"
      failed=1
    fi
  fi
fi

# Step 5: the PyTorch peers.
peers_py=$(tool_path peer_baselines.py)
if [ "${L4_SKIP_PEERS:-0}" = 1 ]; then
  note "peer baselines: skipped (L4_SKIP_PEERS=1)"
elif [ -z "$peers_py" ]; then
  note "peer baselines: skipped, peer_baselines.py is neither in $bin_dir/ nor in tools/"
elif [ -z "$torch_python" ]; then
  note "peer baselines: skipped, no python with torch (tried ${torch_candidates[*]})"
else
  left=$((budget - SECONDS - 20))
  peers_budget=${L4_PEERS_BUDGET:-60}
  if [ "$left" -lt "$((peers_budget + 30))" ]; then peers_budget=$((left - 30)); fi
  if [ "$peers_budget" -lt 15 ]; then
    note "peer baselines: SKIPPED, only $((budget - SECONDS))s of the ${budget}s time budget left"
  else
    run_limited "$((peers_budget + 30))" peers "$torch_python" "$peers_py" --criterion "$out/criterion" \
      --since "$run_start" --out "$out/peers.json" --budget "$peers_budget"
    if [ "$last_status" -eq 0 ]; then
      note "PASS peer baselines (${last_seconds}s): $(tail -n 1 "$out/peers.log")"
    else
      note "FAIL peer baselines (exit $last_status, ${last_seconds}s): $(tail -n 1 "$out/peers.log")"
      failed=1
    fi
  fi
fi

finish
