# Helpers for the PKCS#11 plugin tests: a throw-away SoftHSM2 token, keys
# and certificates from tests/lib/mkpki.sh on it, and OpenSC's pkcs11-spy
# log.  Sourced after tests/lib/lib.sh (TAP, signing, verifiers).
#
# Environment (set by tests/pkcs11/meson.build):
#   P11_FAILING_MODULE   the failing-module.so wrapper (C_Sign fails on demand)
#   P11_TWO_MESSAGES     the two-messages test program
#   SOFTHSM_LIB, SPY_LIB override where SoftHSM2 and pkcs11-spy live.

SOFTHSM_LIB=${SOFTHSM_LIB:-/usr/lib/softhsm/libsofthsm2.so}
SPY_LIB=${SPY_LIB:-/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so}
: "${P11_FAILING_MODULE:=}"
: "${P11_TWO_MESSAGES:=}"
export FAILING_MODULE_TARGET=$SOFTHSM_LIB

USER_PIN=27182818
SO_PIN=12345678
PIN_FILE=$WORK/pin.txt
BAD_PIN_FILE=$WORK/bad-pin.txt
printf '%s\n' "$USER_PIN" >"$PIN_FILE"
printf '9999\n' >"$BAD_PIN_FILE"
chmod 600 "$PIN_FILE" "$BAD_PIN_FILE"

# need_tools: skip the whole script when the real peers are missing.
need_tools() {
    local t
    for t in softhsm2-util p11tool openssl "$@"; do
        command -v "$t" >/dev/null 2>&1 || { echo "1..0 # SKIP $t is not installed"; exit 0; }
    done
    [ -e "$SOFTHSM_LIB" ] || { echo "1..0 # SKIP no SoftHSM2 at $SOFTHSM_LIB"; exit 0; }
}

need_spy() {
    [ -e "$SPY_LIB" ] || { echo "1..0 # SKIP no pkcs11-spy at $SPY_LIB (opensc-pkcs11)"; exit 0; }
}

# token_init LABEL: a fresh SoftHSM2 token store in $WORK (one per script,
# so scripts run in parallel), initialised with USER_PIN and SO_PIN.
token_init() {
    mkdir -p "$WORK/softhsm/tokens"
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
        "$WORK/softhsm/tokens" >"$WORK/softhsm/softhsm2.conf"
    export SOFTHSM2_CONF=$WORK/softhsm/softhsm2.conf
    softhsm2-util --init-token --free --label "$1" --so-pin "$SO_PIN" --pin "$USER_PIN" \
        >"$WORK/softhsm/init-$1.log" 2>&1 || { cat "$WORK/softhsm/init-$1.log" >&2; return 1; }
}

_p11tool() {
    GNUTLS_PIN=$USER_PIN p11tool --provider "$SOFTHSM_LIB" --login --write "$@" \
        >>"$WORK/softhsm/p11tool.log" 2>&1 || { tail -n 5 "$WORK/softhsm/p11tool.log" >&2; return 1; }
}

# token_put_key TOKEN KEYFILE LABEL ID: a private key (ID in hex).
token_put_key() {
    _p11tool --load-privkey "$2" --label "$3" --id "$4" "pkcs11:token=$1"
}

# token_put_cert TOKEN CERTFILE LABEL ID
token_put_cert() {
    _p11tool --load-certificate "$2" --label "$3" --id "$4" "pkcs11:token=$1"
}

# token_put_pubkey TOKEN KEYFILE LABEL ID: the public half of a key file.
token_put_pubkey() {
    openssl pkey -in "$2" -pubout -out "$WORK/softhsm/$3.pub.pem" 2>/dev/null &&
        _p11tool --load-pubkey "$WORK/softhsm/$3.pub.pem" --label "$3" --id "$4" "pkcs11:token=$1"
}

# token_put_signer TOKEN NAME ID: key and certificate of test signer NAME.
token_put_signer() {
    token_put_key "$1" "$PKI/$2.key" "$2" "$3" && token_put_cert "$1" "$PKI/$2.pem" "$2" "$3"
}

# ---- running smimestream without a terminal ------------------------------

# sign_notty OUT ARGS...: like lib.sh's sign, but in a new session with no
# controlling terminal, so the CLI's /dev/tty PIN prompt cannot open.
sign_notty() {
    local out=$1
    shift
    setsid -w timeout -k 5 "$SIGN_TIMEOUT" "$SMIMESTREAM" sign -o "$out" "$@" \
        <"${SIGN_STDIN:-/dev/null}" 2>"$out.err"
    SIGN_RC=$?
    return $SIGN_RC
}

# expect_fail OUT WANT_RC REGEX ARGS...: sign_notty exits WANT_RC, its
# stderr matches REGEX, and no message (nor a partial file) is left at OUT.
expect_fail() {
    local out=$1 want=$2 re=$3
    shift 3
    sign_notty "$out" "$@"
    [ "$SIGN_RC" -eq "$want" ] || { cat "$out.err" >&2; say "exit $SIGN_RC, expected $want"; return 1; }
    grep_file "$re" "$out.err" "the error message" || return 1
    [ ! -e "$out" ] || say "$out exists after a failure" || return 1
    ! compgen -G "$out.partial-*" >/dev/null || say "a partial file was left next to $out"
}

# no_secret FILE SECRET: SECRET does not appear in FILE.
no_secret() {
    ! grep -qF -- "$2" "$1" || say "$1 shows the PIN"
}

# ---- pkcs11-spy --------------------------------------------------------------

# spy_uri URI: URI with module-path= pointing at the spy (which forwards to
# SoftHSM2 via $PKCS11SPY).  Appends to an existing query.
spy_uri() {
    case $1 in
    *\?*) echo "$1&module-path=$SPY_LIB" ;;
    *) echo "$1?module-path=$SPY_LIB" ;;
    esac
}

# with_spy LOG CMD...: run CMD with the spy logging to LOG.
with_spy() {
    local log=$1
    shift
    rm -f "$log"
    PKCS11SPY=$SOFTHSM_LIB PKCS11SPY_OUTPUT=$log "$@"
}

# spy_count LOG FUNCTION-REGEX: how many calls of that function.
spy_count() {
    grep -cE "^[0-9]+: ($2)\$" "$1"
}

# spy_sign_lens LOG: the ulDataLen of every C_Sign, one a line.
spy_sign_lens() {
    awk '/^[0-9]+: C_Sign$/ { s = 1; next }
         /^[0-9]+: C_/      { s = 0 }
         s && /pData\[ulDataLen\]/ { print $NF; s = 0 }' "$1"
}

# spy_sign_data LOG N: the hex bytes given to the Nth C_Sign (one line).
spy_sign_data() {
    awk -v want="$2" '/^[0-9]+: C_Sign$/ { n++; s = (n == want); next }
         /^[0-9]+: C_/ { s = 0 }
         /^\[out\]/ { s = 0 }
         s && /^    [0-9a-fA-F]+  / { for (i = 2; i <= 17 && $i ~ /^[0-9A-F][0-9A-F]$/; i++) printf "%s", $i }
         END { print "" }' "$1"
}

# spy_login_types LOG: the userType of every C_Login, one a line.
spy_login_types() {
    awk '/^[0-9]+: C_Login$/ { s = 1; next }
         s && /userType/ { print $NF; s = 0 }' "$1"
}

# spy_max_in_len LOG: the largest input buffer any call was given.
spy_max_in_len() {
    grep -E '^\[in\] p[A-Za-z]*\[ul[A-Za-z]*Len\]' "$1" | awk '{ print $NF }' | sort -n | tail -n 1
}

# ---- the signature ---------------------------------------------------------

# sig_alg_matches MSG REGEX: the signature algorithm of the SignerInfo
# (as openssl prints the CMS structure) matches REGEX.
sig_alg_matches() {
    split_entity "$1" >/dev/null 2>&1 || say "cannot split $1" || return 1
    local alg
    alg=$(openssl cms -cmsout -print -inform DER -in "$1.d/sig.der" 2>/dev/null |
        sed -n '/signatureAlgorithm:/{n;p;q}' | sed 's/.*algorithm: *//')
    grep -Eq -- "$2" <<<"$alg" || say "signature algorithm '$alg', expected /$2/"
}
