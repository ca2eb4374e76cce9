#!/usr/bin/env bash
# Everything CI checks, on a fresh Debian 12 machine (as root):
#   1. packages (scripts/install-deps.sh)
#   2. build/ (RelWithDebInfo) and all its tests: unit tests (and any test
#      not labelled "integration") in parallel, then the integration tests
#      (real FUSE mounts and daemons) one at a time
#   3. the Debian package (scripts/package.sh: build-release/, no test
#      seams) and its tests (tests/package: fields, files, then installed
#      with dpkg, a mirror through `mount -t mirrorfs`, and purged)
#   4. build-asan/ (-DMIRRORFS_SANITIZE=address,undefined): its unit test
#      binaries (target unit_tests) and their tests
# Exits non-zero if any step fails; the last line is "summary: N passed, N failed".
# SKIP_PACKAGE=1 and SKIP_ASAN=1 skip steps 3 and 4 (local iterations only;
# CI runs them).
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=$(nproc)
logs=$(mktemp -d /tmp/mirrorfs-test.XXXXXX)
passed=0
failed=0
failures=()
start=$SECONDS

# Runs one test command ($3...), named $1, logging its output; $2 names
# the function that prints "PASSED FAILED" from that log (nothing when it
# finds no summary). Adds them to the totals; a run that fails, or ends
# without a summary, without counting a failure counts as one.
run_tests() {
  local what=$1 counts_of=$2 log rc=0 counts p f
  shift 2
  log=$logs/$(tr -c 'a-zA-Z0-9\n' '_' <<<"$what").log
  echo "== $what: $*"
  "$@" 2>&1 | tee "$log" || rc=$?
  counts=$("$counts_of" "$log")
  read -r p f <<<"${counts:-0 0}"
  passed=$((passed + p))
  failed=$((failed + f))
  if [[ $rc -ne 0 || -z $counts ]]; then
    [[ $f -eq 0 ]] && failed=$((failed + 1))
    failures+=("$what")
  fi
}

# ctest's closing line: "NN% tests passed, F tests failed out of T".
ctest_counts() {
  local line f t
  line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$1" | tail -n 1 || true)
  [[ -n $line ]] || return 0
  f=$(sed -E 's/.* ([0-9]+) tests? failed out of.*/\1/' <<<"$line")
  t=$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")
  echo "$((t - f)) $f"
}

# pytest's closing line: "== 1 failed, 2 passed, 1 skipped in 3.1s ==".
pytest_counts() {
  local line p f
  line=$(grep -E '^=+ .* in [0-9.]+s' "$1" | tail -n 1 || true)
  [[ -n $line ]] || return 0
  p=$(grep -oE '[0-9]+ passed' <<<"$line" | cut -d' ' -f1 || true)
  f=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$line" | cut -d' ' -f1 | paste -sd+ | bc || true)
  echo "${p:-0} ${f:-0}"
}

run_ctest() {
  local what=$1
  shift
  run_tests "$what" ctest_counts ctest --no-tests=error --output-on-failure "$@"
}

run_pytest() {
  local what=$1
  shift
  run_tests "$what" pytest_counts /usr/bin/python3 -m pytest -v -p no:cacheprovider "$@"
}

# Runs a step that is not a test run; a failure counts as one failed check.
step() {
  local what=$1
  shift
  echo "== $what"
  if ! "$@"; then
    failed=$((failed + 1))
    failures+=("$what")
    return 1
  fi
}

finish() {
  echo
  if [[ ${#failures[@]} -gt 0 ]]; then
    echo "test.sh: FAILED: ${failures[*]} (logs in $logs)"
  else
    echo "test.sh: all green in $((SECONDS - start)) s"
    rm -rf "$logs"
  fi
  echo "summary: $passed passed, $failed failed"
  [[ ${#failures[@]} -eq 0 ]]
}

step "packages" bash scripts/install-deps.sh || { finish; exit 1; }

if step "build (build/)" bash scripts/build.sh build; then
  run_ctest "unit tests" --test-dir build -LE integration -j "$jobs"
  run_ctest "integration tests" --test-dir build -L integration
fi

if [[ ${SKIP_PACKAGE:-0} != 1 ]]; then
  if step "Debian package (build-release/)" bash scripts/package.sh build-release; then
    debs=(build-release/mirrorfs_*.deb)
    MIRRORFS_DEB=${debs[0]} run_pytest "package tests" tests/package
  fi
fi

if [[ ${SKIP_ASAN:-0} != 1 ]]; then
  # Only the unit test binaries: they are all that runs under the sanitizers.
  if step "sanitizer build (build-asan/, unit tests)" \
    env BUILD_TARGET=unit_tests \
    bash scripts/build.sh build-asan -DMIRRORFS_SANITIZE=address,undefined; then
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
      UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
      run_ctest "unit tests under ASan+UBSan" --test-dir build-asan -L unit -j "$jobs"
  fi
fi

finish
