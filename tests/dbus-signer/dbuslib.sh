# Helpers for the dbus-signer tests.  Source it first thing in a script:
#   . "$(dirname "$0")/dbuslib.sh"
# It re-runs the script on a private session bus (dbus-run-session with
# session.conf beside this file), then sources tests/lib/lib.sh.
#
# Environment (set by tests/dbus-signer/meson.build): TEST_APP_SIGNER,
# TEST_PIN_PROMPT, MOCK_AGENT, SMIMESTREAM_AGENT (may not exist),
# DBUS_SESSION_CONF, plus what lib.sh wants.

_dbs_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -z "${SMS_DBS_ON_BUS:-}" ]; then
    command -v dbus-run-session >/dev/null || { echo "1..0 # SKIP dbus-run-session is not installed"; exit 0; }
    export SMS_DBS_ON_BUS=1
    exec dbus-run-session --config-file="${DBUS_SESSION_CONF:-$_dbs_dir/session.conf}" -- bash "$0" "$@"
fi

: "${SMIMESTREAM:=$_dbs_dir/../../build-dbs/agent/smimestream}"
_dbs_build=$(dirname "$(dirname "$SMIMESTREAM")")
: "${SMIMESTREAM_PLUGIN_DIR:=$_dbs_build/plugins/dbus}"
: "${TEST_APP_SIGNER:=$_dbs_build/tests/dbus-signer/test-app-signer}"
: "${TEST_PIN_PROMPT:=$_dbs_build/tests/dbus-signer/test-pin-prompt}"
: "${MOCK_AGENT:=$_dbs_build/tests/dbus-signer/mock-agent}"
: "${DBS_THREADS:=$_dbs_build/tests/dbus-signer/threads}"
: "${SMIMESTREAM_AGENT:=$_dbs_build/agent/smimestream-agent}"
: "${SMS_PKI_DIR:=$_dbs_build/tests/pki}"
export SMIMESTREAM SMIMESTREAM_PLUGIN_DIR SMS_PKI_DIR
unset SMIMESTREAM_BUS SMIMESTREAM_DBUS_SIGN_TIMEOUT

. "$_dbs_dir/../lib/lib.sh"

[ -n "${DBUS_SESSION_BUS_ADDRESS:-}" ] || bail_out "not on a private session bus"
for p in "$TEST_APP_SIGNER" "$TEST_PIN_PROMPT" "$MOCK_AGENT"; do
    [ -x "$p" ] || bail_out "test program missing: $p"
done

SIGNER_PATH=/org/smimestream/test/Signer
PROMPT_PATH=/org/smimestream/test/PinPrompt

# start_bg VAR_PREFIX CMD...: start CMD in the background, wait until it
# prints its unique bus name; sets ${VAR_PREFIX}_PID and ${VAR_PREFIX}_BUS.
start_bg() {
    local prefix=$1
    shift
    local out
    out=$(mktemp "$WORK/$prefix.out.XXXXXX")
    "$@" >"$out" 2>"$out.err" &
    local pid=$!
    bg_track "$pid"
    local i
    for i in $(seq 1 200); do
        if [ -s "$out" ]; then
            printf -v "${prefix}_PID" '%s' "$pid"
            printf -v "${prefix}_BUS" '%s' "$(head -n1 "$out")"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "not ready: $*" >&2
    cat "$out.err" >&2
    return 1
}

# start_app PREFIX KEYNAME [OPTIONS...]: test-app-signer with the test PKI's
# key KEYNAME; log in $WORK/PREFIX.log.
start_app() {
    local prefix=$1 key=$2
    shift 2
    : >"$WORK/$prefix.log"
    start_bg "$prefix" "$TEST_APP_SIGNER" --key "$PKI/$key.key" --cert "$PKI/$key-chain.pem" \
        --name "$prefix" --log "$WORK/$prefix.log" "$@"
}

# sign_calls LOG: the Sign lines of a test-app-signer log.
sign_calls() {
    grep '^Sign ' "$1"
}

# one_sign LOG ALG MAXLEN: exactly one Sign call, with ALG and at most MAXLEN bytes.
one_sign() {
    local n
    n=$(sign_calls "$1" | wc -l)
    [ "$n" -eq 1 ] || say "$n Sign calls, expected 1: $(cat "$1")" || return 1
    local alg len
    read -r _ alg len < <(sign_calls "$1")
    [ "$alg" = "$2" ] || say "Sign algorithm '$alg', expected '$2'" || return 1
    [ "$len" -gt 0 ] && [ "$len" -le "$3" ] || say "Sign got $len bytes, expected 1..$3"
}

# expect_sign_fail OUT RC_REGEX MSG_REGEX ARGS...: smimestream sign fails with
# an exit code matching RC_REGEX, says MSG_REGEX, and leaves no OUT.
expect_sign_fail() {
    local out=$1 rcs=$2 re=$3
    shift 3
    sign "$out" "$@"
    local rc=$SIGN_RC
    [[ "$rc" =~ ^($rcs)$ ]] || { cat "$out.err" >&2; say "exit code $rc, expected $rcs"; return 1; }
    [ ! -e "$out" ] || say "smimestream left $out behind" || return 1
    grep_file "$re" "$out.err" "stderr"
}
