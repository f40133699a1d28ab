# Shared helpers for the smimestream interop tests (bash, TAP output).
#
# Source it from a test script:   . "$(dirname "$0")/../lib/lib.sh"
#
# Environment (set by tests/interop/meson.build; defaults for running by hand
# from the source tree with a build directory called build-interop):
#   SMIMESTREAM             the smimestream executable
#   SMIMESTREAM_PLUGIN_DIR  the software signer plugin directory
#   TEST_TMP                where each script makes its own temporary directory
#   SMS_PKI_DIR             the test PKI (made by tests/lib/mkpki.sh on first use)
#
# TAP:  plan N (optional), pass/fail DESC, skip DESC REASON, ok DESC CMD...,
#       is GOT WANT DESC, diag TEXT, bail_out TEXT, done_testing (prints the plan when plan
#       was not called, a summary, and exits 1 if any test failed or the
#       count does not match the plan).
# Signing: sign OUT ARGS... runs "smimestream sign -o OUT ARGS..." (stderr in
#       $OUT.err, exit code in $SIGN_RC); signer_args NAME fills SIGNER_ARGS;
#       STD_ARGS holds a From/To/Subject/Body set.
# Verifiers (0 = accepted and checked, 1 = rejected, 2 = could not run):
#       verify_openssl_cms MSG, verify_openssl_smime MSG, verify_certtool MSG,
#       verify_gpgsm MSG; verify_all MSG (all four); their output is kept in
#       MSG.d/.  split_entity MSG writes MSG.d/entity and MSG.d/sig.der.
#       extract_parts MIME DIR: the decoded parts of a multipart/mixed.

set -u
set -o pipefail

LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC_DIR=$(cd "$LIB_DIR/../.." && pwd)
PYTHON=/usr/bin/python3
MIMETOOL="$SRC_DIR/tests/interop/mimetool.py"

: "${SMIMESTREAM:=$SRC_DIR/build-interop/agent/smimestream}"
: "${SMIMESTREAM_PLUGIN_DIR:=$(dirname "$(dirname "$SMIMESTREAM")")/plugins/software}"
: "${TEST_TMP:=${TMPDIR:-/tmp}}"
: "${SMS_PKI_DIR:=$(dirname "$(dirname "$SMIMESTREAM")")/tests/pki}"
export SMIMESTREAM SMIMESTREAM_PLUGIN_DIR TEST_TMP SMS_PKI_DIR
# No user or system OpenSSL configuration may change what the verifiers accept.
export OPENSSL_CONF=/dev/null
export LC_ALL=C.UTF-8
unset GNUTLS_PIN GNUTLS_SO_PIN

PKI=$SMS_PKI_DIR
CA=$PKI/ca.pem

# ---- temporary directory, background processes, cleanup -----------------

mkdir -p "$TEST_TMP"
WORK=$(mktemp -d "$TEST_TMP/$(basename "$0" .sh).XXXXXX") || exit 99
BG_PIDS=()
# gpgsm gets a throw-away home in $WORK (see gpgsm_home); never the user's.
unset GNUPGHOME
GPGSM_HOME="$WORK/gnupg"

# Remember a background process so that cleanup can end it (by its pid).
bg_track() { BG_PIDS+=("$@"); }

# bg_kill PID...: end these processes and everything they started (by pid;
# children first, so that none is left holding a FIFO or our stdout).
bg_kill() {
    local p all=()
    for p in "$@"; do
        all+=($(descendants "$p") "$p")
    done
    for p in "${all[@]}"; do
        kill "$p" 2>/dev/null
    done
    for p in "$@"; do
        wait "$p" 2>/dev/null
    done
    return 0
}

_lib_cleanup() {
    [ ${#BG_PIDS[@]} -eq 0 ] || bg_kill "${BG_PIDS[@]}"
    if [ -d "$GPGSM_HOME" ]; then
        GNUPGHOME=$GPGSM_HOME gpgconf --kill all >/dev/null 2>&1
    fi
    if [ -z "${KEEP_TMP:-}" ]; then
        rm -rf "$WORK"
    else
        echo "# kept $WORK"
    fi
}
trap _lib_cleanup EXIT
trap 'echo "# killed by a signal"; exit 99' INT TERM HUP

# ---- TAP ------------------------------------------------------------------

_tap_n=0
_tap_failed=0
_tap_plan=

plan() {
    _tap_plan=$1
    echo "1..$1"
}

diag() {
    local line
    if [ $# -gt 0 ]; then
        printf '%s\n' "$@"
    else
        cat
    fi | while IFS= read -r line || [ -n "$line" ]; do
        printf '# %s\n' "$line"
    done
}

pass() {
    _tap_n=$((_tap_n + 1))
    echo "ok $_tap_n - $*"
}

fail() {
    _tap_n=$((_tap_n + 1))
    _tap_failed=$((_tap_failed + 1))
    echo "not ok $_tap_n - $*"
}

skip() { # skip DESC REASON
    _tap_n=$((_tap_n + 1))
    echo "ok $_tap_n - $1 # SKIP $2"
}

# ok DESC CMD...: one test point, passing when CMD succeeds.  CMD runs in
# this shell (functions may set variables); its output is shown as a
# diagnostic only when it fails.
ok() {
    local desc=$1
    shift
    local log
    log=$(mktemp "$WORK/log.XXXXXX")
    if "$@" >"$log" 2>&1; then
        pass "$desc"
    else
        local rc=$?
        fail "$desc"
        diag "command failed (exit $rc): $*"
        tail -n 40 "$log" | diag
    fi
    rm -f "$log"
}

# is GOT WANT DESC
is() {
    if [ "$1" = "$2" ]; then
        pass "$3"
    else
        fail "$3"
        diag "got:  '$1'" "want: '$2'"
    fi
}

done_testing() {
    if [ -z "$_tap_plan" ]; then
        echo "1..$_tap_n"
    elif [ "$_tap_plan" != "$_tap_n" ]; then
        diag "planned $_tap_plan tests but ran $_tap_n"
        exit 1
    fi
    diag "$((_tap_n - _tap_failed)) of $_tap_n tests passed"
    [ "$_tap_failed" -eq 0 ] || exit 1
    exit 0
}

# Stop the whole script: something the tests need is missing.
bail_out() {
    echo "Bail out! $*"
    exit 99
}

# ---- small assertions (for use inside ok) ----------------------------------

# say MSG: a reason on stderr, then return 1.
say() {
    echo "$*" >&2
    return 1
}

# expect_rc WANT CMD...: CMD exits with WANT.
expect_rc() {
    local want=$1
    shift
    "$@"
    local rc=$?
    [ "$rc" -eq "$want" ] || say "exit code $rc, expected $want: $*"
}

# same_file A B: byte-identical, with a short report when not.
same_file() {
    [ -f "$1" ] || say "missing: $1" || return 1
    [ -f "$2" ] || say "missing: $2" || return 1
    cmp "$1" "$2" >&2 || say "differ: $1 ($(stat -c %s "$1") bytes) and $2 ($(stat -c %s "$2") bytes)"
}

# grep_file REGEX FILE [what]: extended regex found in FILE.
grep_file() {
    grep -Eq -- "$1" "$2" || {
        echo "no match for /$1/ in ${3:-$2}:" >&2
        head -c 2000 "$2" >&2
        return 1
    }
}

# ---- the PKI ----------------------------------------------------------------

ensure_pki() {
    if [ ! -e "$PKI/.done" ]; then
        bash "$LIB_DIR/mkpki.sh" "$PKI" >&2 || bail_out "mkpki.sh failed for $PKI"
    fi
}
ensure_pki

[ -x "$SMIMESTREAM" ] || bail_out "smimestream not found at $SMIMESTREAM"

# ---- signing ----------------------------------------------------------------

STD_ARGS=(--from 'Scanner <scanner@example.org>' --to office@example.org
          --subject 'Scanned document' --body 'The scanned document is attached.')
SIGNER_ARGS=()
SIGN_RC=0
SIGN_TIMEOUT=${SIGN_TIMEOUT:-60}

# signer_args NAME: the key and chain of the test signer NAME.
signer_args() {
    SIGNER_ARGS=(--signer "$PKI/$1.key" --cert "$PKI/$1-chain.pem")
}

# sign OUT ARGS...: smimestream sign -o OUT ARGS...; stderr goes to OUT.err.
# Returns (and sets SIGN_RC to) smimestream's exit code.
sign() {
    local out=$1
    shift
    timeout -k 5 "$SIGN_TIMEOUT" "$SMIMESTREAM" sign -o "$out" "$@" 2>"$out.err"
    SIGN_RC=$?
    return $SIGN_RC
}

# sign_ok OUT ARGS...: sign and require exit 0 and a message (for ok).
sign_ok() {
    local out=$1
    sign "$@"
    if [ "$SIGN_RC" -ne 0 ]; then
        cat "$out.err" >&2
        say "smimestream sign exited with $SIGN_RC"
        return 1
    fi
    [ -s "$out" ] || say "no message written to $out"
}

# micalg MSG: the micalg parameter of the multipart/signed header.
micalg() {
    sed -n '1,/^\r$/p' "$1" | tr -d '\r' | tr '\n' ' ' |
        grep -o 'micalg=[^;[:space:]]*' | head -n1 | cut -d= -f2 | tr -d '"'
}

# ---- splitting and parsing ---------------------------------------------------

# split_entity MSG: MSG.d/entity (the signed entity, byte-exact) and
# MSG.d/sig.der (the signature).
split_entity() {
    local d="$1.d"
    mkdir -p "$d"
    if [ -s "$d/sig.der" ] && [ "$d/sig.der" -nt "$1" ]; then
        return 0
    fi
    "$PYTHON" "$MIMETOOL" split "$1" "$d/entity" "$d/sig.der"
}

# extract_parts MIME DIR: DIR/N.bin, DIR/N.name, DIR/N.type, DIR/count.
extract_parts() {
    rm -rf "$2"
    "$PYTHON" "$MIMETOOL" parts "$1" "$2"
}

# sig_info MSG: the SignerInfo of the signature, as openssl prints it.
sig_info() {
    split_entity "$1" || return 2
    openssl cms -cmsout -print -inform DER -in "$1.d/sig.der" | sed -n '/signerInfos:/,$p'
}

# signer_algs MSG: "DIGEST SIGNATURE" algorithm names from the SignerInfo,
# e.g. "sha384 rsassaPss" or "sha256 ecdsa-with-SHA256".
signer_algs() {
    local info
    info=$(sig_info "$1") || return 2
    local d s
    d=$(grep -A1 'digestAlgorithm:' <<<"$info" | sed -n 's/.*algorithm: \([^ ]*\).*/\1/p' | head -n1)
    s=$(grep -A1 'signatureAlgorithm:' <<<"$info" | sed -n 's/.*algorithm: \([^ ]*\).*/\1/p' | head -n1)
    echo "$d $s"
}

# algs_are MSG DIGEST SIGALG: the SignerInfo uses exactly these algorithms.
algs_are() {
    local got
    got=$(signer_algs "$1") || say "cannot print the signature of $1" || return 1
    [ "$got" = "$2 $3" ] || say "SignerInfo algorithms are '$got', expected '$2 $3'"
}

# ---- verifiers ----------------------------------------------------------------
# Each returns 0 when the verifier accepted the message (and the checks on
# what it returned passed), 1 when it rejected it, 2 when it could not be run.
# Output: MSG.d/<verifier>.out and .err.

# verify_openssl_cms MSG: openssl cms -verify; the content it returns must be
# the signed entity, byte for byte.  Content in MSG.d/cms.content.
verify_openssl_cms() {
    local m=$1 d="$1.d"
    split_entity "$m" || return 2
    openssl cms -verify -in "$m" -CAfile "$CA" -out "$d/cms.content" \
        -signer "$d/cms.signer.pem" >"$d/cms.out" 2>"$d/cms.err"
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "openssl cms -verify rejected $m (exit $rc):" >&2
        head -n 20 "$d/cms.err" >&2
        return 1
    fi
    grep -q 'Verification successful' "$d/cms.err" ||
        say "openssl cms -verify: no 'Verification successful'" || return 1
    same_file "$d/entity" "$d/cms.content" ||
        say "openssl cms returned content that is not the signed entity" || return 1
}

# verify_openssl_smime MSG: openssl smime -verify; content in MSG.d/smime.content.
verify_openssl_smime() {
    local m=$1 d="$1.d"
    split_entity "$m" || return 2
    openssl smime -verify -in "$m" -CAfile "$CA" -out "$d/smime.content" \
        >"$d/smime.out" 2>"$d/smime.err"
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "openssl smime -verify rejected $m (exit $rc):" >&2
        head -n 20 "$d/smime.err" >&2
        return 1
    fi
    grep -q 'Verification successful' "$d/smime.err" ||
        say "openssl smime -verify: no 'Verification successful'" || return 1
    same_file "$d/entity" "$d/smime.content" ||
        say "openssl smime returned content that is not the signed entity" || return 1
}

# verify_certtool MSG: GnuTLS certtool --p7-verify on the split entity.
verify_certtool() {
    local m=$1 d="$1.d"
    split_entity "$m" || return 2
    certtool --p7-verify --inder --infile "$d/sig.der" --load-data "$d/entity" \
        --load-ca-certificate "$CA" >"$d/certtool.out" 2>"$d/certtool.err"
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "certtool --p7-verify rejected $m (exit $rc):" >&2
        grep -i 'status' "$d/certtool.err" "$d/certtool.out" >&2
        return 1
    fi
    grep -q 'Signature status: ok' "$d/certtool.err" "$d/certtool.out" ||
        say "certtool: exit 0 but no 'Signature status: ok'" || return 1
}

# gpgsm_home: a throw-away GNUPGHOME for this script that trusts the test CA.
# (Always the same directory, so that cleanup stops its agent even when this
# ran in a subshell.)
gpgsm_home() {
    export GNUPGHOME=$GPGSM_HOME
    [ -e "$GNUPGHOME/.ready" ] && return 0
    mkdir -p "$GNUPGHOME" && chmod 700 "$GNUPGHOME"
    local fpr
    fpr=$(openssl x509 -in "$CA" -noout -fingerprint -sha1 | sed 's/.*=//') ||
        say "cannot read the CA fingerprint" || return 2
    printf '%s S relax\n' "$fpr" >"$GNUPGHOME/trustlist.txt"
    # No network, no CRLs for the test PKI.
    printf 'disable-crl-checks\ndisable-dirmngr\n' >"$GNUPGHOME/gpgsm.conf"
    gpgsm --batch --import "$CA" >"$GNUPGHOME/import.log" 2>&1 ||
        { cat "$GNUPGHOME/import.log" >&2; say "gpgsm --import of the CA failed"; return 2; }
    touch "$GNUPGHOME/.ready"
}

# verify_gpgsm MSG: gpgsm --verify of the split signature and entity;
# accepted means exit 0, GOODSIG and VALIDSIG (the chain to the CA checked).
verify_gpgsm() {
    local m=$1 d="$1.d"
    split_entity "$m" || return 2
    gpgsm_home || return 2
    gpgsm --batch --status-fd 1 --verify "$d/sig.der" "$d/entity" \
        >"$d/gpgsm.out" 2>"$d/gpgsm.err"
    local rc=$?
    if [ $rc -ne 0 ] || ! grep -q '^\[GNUPG:\] GOODSIG' "$d/gpgsm.out"; then
        echo "gpgsm --verify rejected $m (exit $rc):" >&2
        grep -E 'GNUPG:\] (BADSIG|ERRSIG|GOODSIG|VALIDSIG|TRUST|ERROR)' "$d/gpgsm.out" >&2
        tail -n 10 "$d/gpgsm.err" >&2
        return 1
    fi
    grep -q '^\[GNUPG:\] BADSIG' "$d/gpgsm.out" && { say "gpgsm: GOODSIG and BADSIG"; return 1; }
    grep -q '^\[GNUPG:\] VALIDSIG' "$d/gpgsm.out" || say "gpgsm: GOODSIG but no VALIDSIG"
}

# verify_all MSG: all four verifiers accept MSG.
verify_all() {
    local v r=0
    for v in verify_openssl_cms verify_openssl_smime verify_certtool verify_gpgsm; do
        "$v" "$1" || { echo "$v failed" >&2; r=1; }
    done
    return $r
}

# rejects VERIFIER MSG: VERIFIER ran and rejected MSG (exit 1 from the wrapper).
rejects() {
    "$1" "$2" >/dev/null 2>&1
    local rc=$?
    [ $rc -eq 1 ] || say "$1 $2: expected a rejection, got $([ $rc -eq 0 ] && echo acceptance || echo "an error ($rc)")"
}

# ---- attachments ---------------------------------------------------------------

# parts_of MSG: MSG.d/parts/ from the content openssl cms -verify returned
# (verify_openssl_cms must have run).
parts_of() {
    [ -f "$1.d/cms.content" ] || verify_openssl_cms "$1" || return 1
    extract_parts "$1.d/cms.content" "$1.d/parts"
}

# attachment_is MSG N FILE [NAME]: part N (the body is part 1) of the content
# openssl verified equals FILE byte for byte (and has file name NAME).
attachment_is() {
    local m=$1 n=$2 f=$3
    [ -f "$m.d/parts/count" ] || parts_of "$m" || return 1
    same_file "$f" "$m.d/parts/$n.bin" || return 1
    if [ $# -ge 4 ]; then
        local got
        got=$(cat "$m.d/parts/$n.name" 2>/dev/null)
        [ "$got" = "$4" ] || say "part $n has file name '$got', expected '$4'"
    fi
}

# random_file FILE BYTES
random_file() {
    head -c "$2" /dev/urandom >"$1"
}

# wait_for COND_CMD... : poll (up to 20 s) until the command succeeds.
wait_for() {
    local i
    for i in $(seq 1 400); do
        "$@" && return 0
        sleep 0.05
    done
    return 1
}

# descendants PID: the pids of all processes below PID.
descendants() {
    local c
    for c in $(pgrep -P "$1"); do
        echo "$c"
        descendants "$c"
    done
}

# wait_fifo_writer: wait (up to 10 s) until a process started by this
# script is blocked opening a FIFO for writing (kernel wait channel
# wait_for_partner), i.e. it is registered as the FIFO's writer.  Returns 1
# on timeout (e.g. when /proc/PID/wchan is not available).
wait_fifo_writer() {
    local i p
    for i in $(seq 1 200); do
        for p in $(descendants $$); do
            [ "$(cat "/proc/$p/wchan" 2>/dev/null)" = wait_for_partner ] && return 0
        done
        sleep 0.05
    done
    return 1
}

# wait_exit PID SECS: wait for the background process PID (a child of this
# shell) to end and return its exit code; after SECS seconds kill it and
# return 124.
wait_exit() {
    local pid=$1 i
    for i in $(seq 1 $(($2 * 20))); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid"
            return $?
        fi
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 124
}

# start_quiet_writer FIFO: a writer that puts 1 MiB of random bytes into
# FIFO and then keeps it open without writing (a scanner that paused), for
# up to 60 s; sets WRITER.  fifo_drained FIFO: everything written was read.
start_quiet_writer() {
    "$PYTHON" - "$1" <<'PY' &
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
data = memoryview(os.urandom(1 << 20))
while data:
    data = data[os.write(fd, data):]
time.sleep(60)
PY
    WRITER=$!
    bg_track "$WRITER"
}
fifo_drained() { [ "$("$PYTHON" "$MIMETOOL" fionread "$1")" = 0 ]; }
