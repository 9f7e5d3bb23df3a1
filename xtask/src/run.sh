#!/usr/bin/env bash
# gpu-bin/run.sh: runs l4lab's packed test and bench binaries on the GPU machine.
# Written by `cargo xtask gpu-pack` from xtask/src/run.sh (edit that file, not the copy).
#
# Usage, from the repository root (the binaries read fixtures relative to it):
#   bash gpu-bin/run.sh
# Settings (environment):
#   OUT=DIR            where every log and result goes (default: gpu-out)
#   L4_REQUIRE_GPU=0   dry run without a GPU: GPU tests skip instead of failing (default 1)
#   L4_SKIP_BENCHES=1  run the tests only
#   L4_BENCH_ARGS=...  extra criterion arguments, e.g. "--warm-up-time 1 --measurement-time 2"
#   L4_TEST_FILTER=... a test-name filter passed to every test binary
#   L4_BIN_TIMEOUT=S   seconds one binary may run before it is killed and counted as failed
#                      (default 600), so one hang cannot eat the whole GPU window
#   PYTHON=...         the Python whose nvidia/cu13 wheel provides NVRTC (default: python3)
# Exit status: 0 when every test and bench binary passed, 1 otherwise.

set -u -o pipefail
shopt -s nullglob

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
bin_dir=gpu-bin
out=${OUT:-gpu-out}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
summary="$out/summary.txt"
: >"$summary"
note() { printf '%s\n' "$*" | tee -a "$summary"; }
join_colon() { local IFS=:; printf '%s' "$*"; }

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
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
  else
    echo "nvidia-smi: not found"
  fi
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
if [ ${#nvrtc_dirs[@]} -eq 0 ]; then
  note "WARNING: no libnvrtc.so.13 found; kernel tests cannot compile their kernels"
fi

failed=0
limit=()
if command -v timeout >/dev/null 2>&1; then limit=(timeout --kill-after=10 "${L4_BIN_TIMEOUT:-600}"); fi
run_logged() { # name, command...: runs the command under the time limit, tees its output to $out/name.log
  local name=$1
  shift
  local start=$SECONDS
  echo "=== $name"
  "${limit[@]}" "$@" 2>&1 | tee "$out/$name.log"
  last_status=${PIPESTATUS[0]}
  last_seconds=$((SECONDS - start))
  if [ "$last_status" -eq 124 ] || [ "$last_status" -eq 137 ]; then
    echo "(killed after ${L4_BIN_TIMEOUT:-600}s)" | tee -a "$out/$name.log"
  fi
}

if [ -x "$bin_dir/l4" ]; then
  run_logged l4-info "$bin_dir/l4" info
  if [ "$last_status" -eq 0 ]; then note "PASS l4 info (${last_seconds}s)"; else note "FAIL l4 info (exit $last_status)"; failed=1; fi
fi

tests=("$bin_dir"/lib-* "$bin_dir"/test-* "$bin_dir"/bin-*)
for b in "${tests[@]}"; do
  name=$(basename "$b")
  filter=()
  if [ -n "${L4_TEST_FILTER:-}" ]; then filter=("$L4_TEST_FILTER"); fi
  run_logged "$name" "$b" --test-threads=1 "${filter[@]}"
  result=$(grep -E '^test result:' "$out/$name.log" | tail -n 1)
  if [ "$last_status" -eq 0 ]; then
    note "PASS $name (${last_seconds}s): $result"
  else
    note "FAIL $name (exit $last_status, ${last_seconds}s): $result"
    grep -E '^test .* \.\.\. FAILED$' "$out/$name.log" | sed 's/^/    /' | tee -a "$summary"
    failed=1
  fi
done

if [ "${L4_SKIP_BENCHES:-0}" = 1 ]; then
  note "benches skipped (L4_SKIP_BENCHES=1)"
else
  for b in "$bin_dir"/bench-*; do
    name=$(basename "$b")
    # shellcheck disable=SC2086 # L4_BENCH_ARGS is a list of arguments
    run_logged "$name" env CRITERION_HOME="$out/criterion" "$b" --bench --noplot ${L4_BENCH_ARGS:-}
    if [ "$last_status" -eq 0 ]; then
      note "PASS $name (${last_seconds}s)"
    else
      note "FAIL $name (exit $last_status, ${last_seconds}s)"
      failed=1
    fi
  done
fi

echo
echo "=== summary ($summary)"
cat "$summary"
if [ "$failed" -ne 0 ]; then
  echo "some binaries FAILED; logs in $out"
  exit 1
fi
echo "all passed; logs in $out"
