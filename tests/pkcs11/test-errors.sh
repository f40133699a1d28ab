#!/bin/bash
# Pre-flight failures: each comes before any attachment byte is read, with
# its own exit code and a message that says which token or object and what
# to do.  77 = PIN refused, 69 = token or key unavailable, 65 = no usable
# certificate, 64 = a URI that cannot be used as given.
. "$(dirname "$0")/../lib/lib.sh"
. "$(dirname "$0")/p11lib.sh"
need_tools

token_init ci || bail_out "cannot create a SoftHSM2 token"
token_put_signer ci rsa2048 01 || bail_out "cannot import rsa2048"
token_put_signer ci p256 02 || bail_out "cannot import p256"
token_put_key ci "$PKI/rsa3072.key" nocert 03 || bail_out "cannot import rsa3072"

# A FIFO whose writer is never opened: reading it would block for ever, so
# a run that ends on its own proves the attachment was never read.
FIFO=$WORK/scanner.fifo
mkfifo "$FIFO"
A=("${STD_ARGS[@]}" --attach "$FIFO")
SIGN_TIMEOUT=20

ok "wrong PIN (--pin-file) exits 77 before the FIFO attachment is read" expect_fail "$WORK/wrong.eml" 77 \
    "wrong PIN for PKCS#11 token 'ci' \\(from --pin-file .*bad-pin.txt\\); check it" \
    "${A[@]}" --signer "pkcs11:token=ci;object=rsa2048" --pin-file "$BAD_PIN_FILE"
ok "wrong PIN: the run ended by itself (not by timeout)" test "$SIGN_RC" -ne 124

ok "wrong pin-value= in the URI exits 77 and names the source" expect_fail "$WORK/wrong-uri.eml" 77 \
    "wrong PIN for PKCS#11 token 'ci' \\(from pin-value in the URI\\)" \
    "${A[@]}" --signer "pkcs11:token=ci;object=rsa2048?pin-value=8642"
ok "wrong pin-value: the PIN itself is not in the message" no_secret "$WORK/wrong-uri.eml.err" 8642

ok "missing token exits 69 and lists the tokens that are there" expect_fail "$WORK/notoken.eml" 69 \
    "no PKCS#11 token matches 'pkcs11:token=nosuch[^']*'; tokens present: .*'ci' \\(SoftHSM" \
    "${A[@]}" --signer "pkcs11:token=nosuch;object=rsa2048?pin-value=1234" --pin-file "$PIN_FILE"
ok "missing token: the pin-value is not echoed in the URI" no_secret "$WORK/notoken.eml.err" "pin-value"

ok "missing object exits 69, names it, and lists the keys" expect_fail "$WORK/noobj.eml" 69 \
    "PKCS#11 token 'ci' has no private key with object='nosuch' \\(private keys on it: .*'rsa2048' \\(id 01\\)" \
    "${A[@]}" --signer "pkcs11:token=ci;object=nosuch" --pin-file "$PIN_FILE"

ok "missing id= exits 69 and names the id" expect_fail "$WORK/noid.eml" 69 \
    "has no private key with id=7f" \
    "${A[@]}" --signer "pkcs11:token=ci;id=%7f" --pin-file "$PIN_FILE"

ok "a key without certificate and no --cert exits 65: give --cert" expect_fail "$WORK/nocert.eml" 65 \
    "PKCS#11 token 'ci' holds no certificate for key 'nocert': give the signer certificate \\(and chain\\) with --cert FILE" \
    "${A[@]}" --signer "pkcs11:token=ci;object=nocert" --pin-file "$PIN_FILE"

ok "a URI that fits several keys exits 64 and says how to choose" expect_fail "$WORK/ambiguous.eml" 64 \
    "3 private keys on PKCS#11 token 'ci' fit 'pkcs11:token=ci' .*add object=LABEL or id=" \
    "${A[@]}" --signer "pkcs11:token=ci" --pin-file "$PIN_FILE"

ok "a malformed URI exits 64" expect_fail "$WORK/badsyntax.eml" 64 \
    "not a valid PKCS#11 URI" \
    "${A[@]}" --signer "pkcs11:token=c%zz" --pin-file "$PIN_FILE"

ok "an attribute the plugin does not know exits 64" expect_fail "$WORK/unknown.eml" 64 \
    "has an attribute this plugin does not know" \
    "${A[@]}" --signer "pkcs11:token=ci;colour=red;object=rsa2048" --pin-file "$PIN_FILE"

ok "type=data cannot sign: 64" expect_fail "$WORK/typedata.eml" 64 \
    "names an object that cannot sign; use type=private" \
    "${A[@]}" --signer "pkcs11:token=ci;object=rsa2048;type=data" --pin-file "$PIN_FILE"

ok "a module-path= that does not exist exits 69" expect_fail "$WORK/nomodule.eml" 69 \
    "cannot load the PKCS#11 module '/nonexistent/module.so' \\(module-path=\\)" \
    "${A[@]}" --signer "pkcs11:token=ci;object=rsa2048?module-path=/nonexistent/module.so" --pin-file "$PIN_FILE"

ok "module-name= of a module that is not configured exits 69 and lists the modules" expect_fail "$WORK/nomodname.eml" 69 \
    "no PKCS#11 module named 'nosuchmodule' is configured for p11-kit \\(modules: .*softhsm2" \
    "${A[@]}" --signer "pkcs11:token=ci;object=rsa2048?module-name=nosuchmodule" --pin-file "$PIN_FILE"

# SoftHSM2 never locks a PIN, so the wrapper module answers C_Login with
# CKR_PIN_LOCKED while $FAIL_LOGIN_FILE exists (see failing-module.c).
if [ -n "$P11_FAILING_MODULE" ] && [ -e "$P11_FAILING_MODULE" ]; then
    touch "$WORK/fail-login"
    export FAIL_LOGIN_FILE=$WORK/fail-login
    ok "a locked PIN exits 77 and says to unblock it with the SO PIN" expect_fail "$WORK/locked.eml" 77 "user PIN of PKCS#11 token 'ci' is locked .*unblock it with the SO PIN" \
        "${A[@]}" --signer "pkcs11:token=ci;object=rsa2048?module-path=$P11_FAILING_MODULE" --pin-file "$PIN_FILE"
    unset FAIL_LOGIN_FILE
else
    skip "a locked PIN exits 77" "no failing-module.so"
fi

# A second token: a URI without token= may now fit both.
token_init other || bail_out "cannot create a second token"
token_put_signer other p256 09 || bail_out "cannot import p256 into the second token"
ok "a URI that fits two tokens exits 64 and lists them" expect_fail "$WORK/twotokens.eml" 64 \
    "the PKCS#11 URI 'pkcs11:object=p256' matches 2 tokens: '(ci|other)' \\(SoftHSM[^)]*\\), '(ci|other)' \\(SoftHSM[^)]*\\); add token=LABEL or serial=" \
    "${A[@]}" --signer "pkcs11:object=p256" --pin-file "$PIN_FILE"
ok "... unless only one of them shows an object with that label (its certificate)" \
    sign_ok "$WORK/onetoken.eml" "${STD_ARGS[@]}" --signer "pkcs11:object=rsa2048" --pin-file "$PIN_FILE"

ok "the same token and key sign fine with the right PIN (sanity)" \
    sign_ok "$WORK/good.eml" "${STD_ARGS[@]}" --signer "pkcs11:token=ci;object=rsa2048" --pin-file "$PIN_FILE"
ok "the sanity message verifies" verify_openssl_cms "$WORK/good.eml"

done_testing
