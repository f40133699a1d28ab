#!/bin/bash
# scripts/check.sh: install what is missing, build, and run the whole test
# suite: once in a normal build, once under ASan+UBSan, and the unit tests
# under valgrind.  The last line is "N passed, N failed".
#
#   CHECK_QUICK=1 scripts/check.sh     # normal build only
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. scripts/deps.sh
sms_install_deps || exit 1

passed=0
failed=0

# Run "meson test" in a build dir and add its counts to the totals.
run_suite() {
    local name=$1 dir=$2; shift 2
    echo "=== $name ==="
    local log
    log=$(mktemp)
    meson test -C "$dir" --print-errorlogs --num-processes 2 "$@" 2>&1 | tee "$log" | \
        grep -E '^ *[0-9]+/[0-9]+ |^(Ok|Fail|Skipped|Timeout|Expected Fail|Unexpected Pass):'
    local ok fail to up
    ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    fail=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    to=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    up=$(sed -n 's/^Unexpected Pass: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    if [ -z "$ok" ]; then
        echo "$name: the test run did not complete" >&2
        tail -30 "$log" >&2
        failed=$((failed + 1))
    else
        passed=$((passed + ok))
        failed=$((failed + ${fail:-0} + ${to:-0} + ${up:-0}))
    fi
    rm -f "$log"
}

build() {
    local dir=$1; shift
    if [ -d "$dir" ]; then
        # Re-apply the options: a build dir made by demo.sh lacks -Werror.
        meson setup --reconfigure "$dir" -Dwerror=true "$@" >/dev/null || return 1
    else
        meson setup "$dir" -Dwerror=true "$@" >/dev/null || return 1
    fi
    meson compile -C "$dir" >"$dir/compile.log" 2>&1 || { cat "$dir/compile.log" >&2; return 1; }
}

if build build; then
    run_suite "tests" build
else
    echo "build failed" >&2
    failed=$((failed + 1))
fi

if [ -z "${CHECK_QUICK:-}" ]; then
    if build build-asan -Db_sanitize=address,undefined -Db_lundef=false; then
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
            run_suite "tests under ASan+UBSan" build-asan
    else
        echo "ASan build failed" >&2
        failed=$((failed + 1))
    fi
    if command -v valgrind >/dev/null; then
        run_suite "unit tests under valgrind" build --suite unit --timeout-multiplier 10 \
            --wrap "valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite --quiet"
    fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
