#!/bin/bash
# An application that holds the key signs over D-Bus (dbus:BUSNAME/PATH, no
# agent): the messages verify with openssl, gpgsm and certtool, and the
# application sees one Sign call with the digest only (Ed25519: the signed
# attributes, < 1 KiB), never the content.
. "$(dirname "$0")/dbuslib.sh"

ATT=$WORK/scan.bin
random_file "$ATT" 2000000
MSG_ARGS=("${STD_ARGS[@]}" --attach "$ATT")

# check KEY ALG MAXLEN VERIFIERS [SIGN OPTIONS...]
check() {
    local key=$1 alg=$2 max=$3 verifiers=$4
    shift 4
    local tag
    tag=$(printf '%s' "$key $*" | tr -c 'A-Za-z0-9' '_')
    local M=$WORK/$tag.eml
    if ! start_app "$tag" "$key"; then
        fail "$key $*: test-app-signer starts"
        return
    fi
    local var="${tag}_BUS"
    local spec="dbus:${!var}$SIGNER_PATH"
    ok "$key $*: smimestream sign --signer $spec" sign_ok "$M" "${MSG_ARGS[@]}" --signer "$spec" "$@"
    ok "$key $*: one Sign call, $alg, at most $max bytes" one_sign "$WORK/$tag.log" "$alg" "$max"
    local v
    for v in $verifiers; do
        ok "$key $*: $v accepts it" "verify_$v" "$M"
    done
    ok "$key $*: the attachment arrives unchanged" entity_attachment_is "$M" "$ATT"
}

entity_attachment_is() {
    split_entity "$1" && extract_parts "$1.d/entity" "$1.d/parts" && same_file "$2" "$1.d/parts/2.bin"
}

check rsa2048 rsa-pkcs1-sha256 64 "openssl_cms openssl_smime certtool gpgsm"
check p256 ecdsa-sha256 64 "openssl_cms openssl_smime certtool gpgsm"
check ed25519 ed25519 1024 "certtool"
skip "ed25519: openssl cms -verify" "OpenSSL 3.0 does not verify Ed25519 CMS signatures"
skip "ed25519: gpgsm --verify" "gpgsm 2.2 does not verify Ed25519 CMS signatures"
check rsa2048 rsa-pss-sha256 64 "openssl_cms certtool gpgsm" --pss
ok "rsa2048 --pss: the signature is RSASSA-PSS" algs_are "$WORK/rsa2048___pss.eml" sha256 rsassaPss
check rsapss rsa-pss-sha256 64 "openssl_cms certtool"
check p384 ecdsa-sha384 64 "openssl_cms certtool gpgsm"
check rsa3072 rsa-pkcs1-sha512 64 "openssl_cms certtool gpgsm" --digest sha512
check p256 ecdsa-sha224 64 "openssl_cms certtool" --digest sha224

# A well-known name instead of the unique one.
M=$WORK/wellknown.eml
if start_app wellknown p256 --bus-name org.example.ScanApp; then
    ok "dbus:org.example.ScanApp$SIGNER_PATH signs" sign_ok "$M" "${MSG_ARGS[@]}" --signer "dbus:org.example.ScanApp$SIGNER_PATH"
    ok "well-known name: openssl cms accepts it" verify_openssl_cms "$M"
    ok "well-known name: one Sign call" one_sign "$WORK/wellknown.log" ecdsa-sha256 64
else
    fail "test-app-signer --bus-name starts"
fi

# --cert replaces the chain the application sends: the leaf alone.
M=$WORK/certopt.eml
if start_app certopt rsa2048; then
    ok "--cert with a D-Bus signer signs" sign_ok "$M" "${MSG_ARGS[@]}" --signer "dbus:$certopt_BUS$SIGNER_PATH" --cert "$PKI/rsa2048.pem"
    n=$(split_entity "$M" >/dev/null 2>&1; openssl pkcs7 -inform DER -in "$M.d/sig.der" -print_certs 2>/dev/null | grep -c '^subject=')
    is "$n" 1 "--cert: the SignedData holds just the leaf from --cert"
    ok "--cert: the application was not asked for its certificates" bash -c "! grep -q '^Get' '$WORK/certopt.log'"
else
    fail "test-app-signer starts (certopt)"
fi

# Two messages in one smimestream run are not possible from the CLI; but two
# runs against one application each make one call.
M=$WORK/again.eml
start_app again rsa2048 || fail "test-app-signer starts (again)"
sign_ok "$WORK/again1.eml" "${MSG_ARGS[@]}" --signer "dbus:$again_BUS$SIGNER_PATH" >/dev/null 2>&1
ok "a second message from the same application signs" sign_ok "$M" "${MSG_ARGS[@]}" --signer "dbus:$again_BUS$SIGNER_PATH"
is "$(sign_calls "$WORK/again.log" | wc -l)" 2 "two messages: two Sign calls"

# Threads: 8 threads share three application signers (RSA, P-256, Ed25519),
# 5 rounds each; every signature is checked against its certificate.
if start_app th_rsa rsa2048 && start_app th_p256 p256 && start_app th_ed ed25519; then
    out=$("$DBS_THREADS" 8 5 "dbus:$th_rsa_BUS$SIGNER_PATH" "dbus:$th_p256_BUS$SIGNER_PATH" \
        "dbus:$th_ed_BUS$SIGNER_PATH" 2>&1)
    is "$out" "ok 120" "8 threads x 5 rounds x 3 shared signers: 120 good signatures"
    is "$(cat "$WORK"/th_*.log | grep -c '^Sign ')" 120 "  ... and the applications saw 120 Sign calls"
else
    fail "three test-app-signers start (threads)"
fi

done_testing
