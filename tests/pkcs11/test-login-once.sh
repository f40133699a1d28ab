#!/bin/bash
# A signer opened once signs several messages with one login: the
# two-messages program (libsmimestream, one sms_signer_open, two
# sms_message_read loops) runs through pkcs11-spy, and the log must show one
# C_Login, two C_Sign and, at the end, one C_Logout.  A key marked
# CKA_ALWAYS_AUTHENTICATE still logs in once as the user, plus the
# context-specific login right after each C_SignInit.
. "$(dirname "$0")/../lib/lib.sh"
. "$(dirname "$0")/p11lib.sh"
need_tools
need_spy
[ -n "$P11_TWO_MESSAGES" ] && [ -x "$P11_TWO_MESSAGES" ] ||
    { echo "1..0 # SKIP the two-messages program was not built"; exit 0; }

token_init ci || bail_out "cannot create a SoftHSM2 token"
token_put_signer ci rsa2048 01 || bail_out "cannot import rsa2048"
token_put_signer ci ed25519 02 || bail_out "cannot import ed25519"

for key in rsa2048 ed25519; do
    LOG=$WORK/spy-$key.log
    ok "$key: one signer, two messages, through the spy" with_spy "$LOG" \
        "$P11_TWO_MESSAGES" --pin-file "$PIN_FILE" "$(spy_uri "pkcs11:token=ci;object=$key")" \
        "$WORK/$key-1.eml" "$WORK/$key-2.eml"
    is "$(spy_count "$LOG" C_Login)" 1 "$key: C_Login once"
    is "$(spy_count "$LOG" C_Sign)" 2 "$key: C_Sign twice (once per message)"
    is "$(spy_count "$LOG" C_OpenSession)" 1 "$key: one session"
    is "$(spy_count "$LOG" C_Logout)" 1 "$key: C_Logout once, when the signer is freed"
    is "$(spy_count "$LOG" C_Initialize)" 1 "$key: the module is initialised once"
    is "$(spy_count "$LOG" C_Finalize)" 1 "$key: and finalised once"
done
for i in 1 2; do
    ok "rsa2048: message $i verifies with openssl cms" verify_openssl_cms "$WORK/rsa2048-$i.eml"
    ok "ed25519: message $i verifies with certtool" verify_certtool "$WORK/ed25519-$i.eml"
done
ok "the two messages are different messages" bash -c '! cmp -s "$1" "$2"' _ "$WORK/rsa2048-1.eml" "$WORK/rsa2048-2.eml"

# CKA_ALWAYS_AUTHENTICATE: p11tool cannot set it, pkcs11-tool can.
if command -v pkcs11-tool >/dev/null 2>&1; then
    openssl pkey -in "$PKI/p256.key" -outform DER -out "$WORK/p256.der" 2>/dev/null
    pkcs11-tool --module "$SOFTHSM_LIB" --token-label ci --login --pin "$USER_PIN" \
        --write-object "$WORK/p256.der" --type privkey --id 03 --label always --usage-sign \
        --always-auth >"$WORK/pkcs11-tool.log" 2>&1 &&
        token_put_cert ci "$PKI/p256.pem" always 03 || bail_out "cannot import the always-authenticate key"
    LOG=$WORK/spy-always.log
    ok "always-authenticate key: one signer, two messages" with_spy "$LOG" \
        "$P11_TWO_MESSAGES" --pin-file "$PIN_FILE" "$(spy_uri "pkcs11:token=ci;object=always")" \
        "$WORK/always-1.eml" "$WORK/always-2.eml"
    is "$(spy_login_types "$LOG" | tr '\n' ' ')" "CKU_USER CKU_CONTEXT_SPECIFIC CKU_CONTEXT_SPECIFIC " \
        "always-authenticate: one user login, then a context-specific login per signature"
    ok "always-authenticate: each context-specific login comes right after C_SignInit" \
        bash -c '[ "$(grep -E "^[0-9]+: C_" "$1" | awk "{print \$2}" | grep -A1 "^C_SignInit$" | grep -c "^C_Login$")" -eq 2 ]' _ "$LOG"
    is "$(spy_count "$LOG" C_Sign)" 2 "always-authenticate: C_Sign twice"
    ok "always-authenticate: message 1 verifies" verify_openssl_cms "$WORK/always-1.eml"
    ok "always-authenticate: message 2 verifies" verify_openssl_cms "$WORK/always-2.eml"
else
    skip "CKA_ALWAYS_AUTHENTICATE" "pkcs11-tool (opensc) is not installed"
fi

done_testing
