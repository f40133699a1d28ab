#!/bin/bash
# A token that fails at sign time (a card pulled out during a long scan)
# leaves the message in the abort state: non-zero exit, a message naming the
# token, and no output file.  A real card cannot be pulled in CI, so
# failing-module.so (failing-module.c) forwards every call to SoftHSM2 and
# makes C_Sign fail while the file $FAIL_SIGN_FILE exists.
. "$(dirname "$0")/../lib/lib.sh"
. "$(dirname "$0")/p11lib.sh"
need_tools
[ -n "$P11_FAILING_MODULE" ] && [ -e "$P11_FAILING_MODULE" ] ||
    { echo "1..0 # SKIP failing-module.so was not built"; exit 0; }

token_init ci || bail_out "cannot create a SoftHSM2 token"
token_put_signer ci rsa2048 01 || bail_out "cannot import rsa2048"
token_put_signer ci p256 02 || bail_out "cannot import p256"

ATT=$WORK/scan.bin
random_file "$ATT" $((8 * 1024 * 1024))
export FAIL_SIGN_FILE=$WORK/pull-the-card
URI="pkcs11:token=ci;object=rsa2048?module-path=$P11_FAILING_MODULE"

ok "through the wrapper module, signing works while the card is in" \
    sign_ok "$WORK/in.eml" "${STD_ARGS[@]}" --attach "$ATT" --signer "$URI" --pin-file "$PIN_FILE"
ok "the message made through the wrapper verifies" verify_openssl_cms "$WORK/in.eml"

# fail_case CODE DESC-REGEX WANT_RC
for code in CKR_DEVICE_REMOVED CKR_TOKEN_NOT_PRESENT CKR_SESSION_HANDLE_INVALID CKR_FUNCTION_FAILED; do
    echo "$code" >"$FAIL_SIGN_FILE"
    case $code in
    CKR_FUNCTION_FAILED) re="PKCS#11 token 'ci' failed to sign with key 'rsa2048' \\(CKR_FUNCTION_FAILED" ;;
    *) re="PKCS#11 token 'ci' was removed or stopped answering while signing \\($code.*must not be sent" ;;
    esac
    ok "$code at sign time: exit 69, the token named, no output file" \
        expect_fail "$WORK/out-$code.eml" 69 "signing failed: $re" \
        "${STD_ARGS[@]}" --attach "$ATT" --signer "$URI" --pin-file "$PIN_FILE"
done

# To standard output the bytes are already gone; the message must still
# never be finished: no signature part and no closing boundary.
echo CKR_DEVICE_REMOVED >"$FAIL_SIGN_FILE"
setsid -w timeout 60 "$SMIMESTREAM" sign "${STD_ARGS[@]}" --attach "$ATT" \
    --signer "pkcs11:token=ci;object=p256?module-path=$P11_FAILING_MODULE" --pin-file "$PIN_FILE" \
    >"$WORK/stdout.eml" 2>"$WORK/stdout.err" </dev/null
is "$?" 69 "to standard output: exit 69"
ok "to standard output: the error says the output is incomplete and unsigned" \
    grep_file "incomplete and unsigned; discard it" "$WORK/stdout.err"
ok "to standard output: the attachment was streamed before signing" \
    test "$(stat -c %s "$WORK/stdout.eml")" -gt $((8 * 1024 * 1024))
ok "to standard output: no signature part was written" \
    bash -c '! grep -q "application/pkcs7-signature; name" "$1"' _ "$WORK/stdout.eml"
ok "to standard output: the outer multipart was never closed" \
    bash -c 'b=$(grep -m1 -o "boundary=\"[^\"]*\"" "$1" | cut -d\" -f2); ! grep -qF -- "--$b--" "$1"' _ "$WORK/stdout.eml"

# The library caller sees the same: SMS_ERR_UNAVAILABLE, the failed phase,
# a sticky error that names the token.
if [ -n "$P11_TWO_MESSAGES" ]; then
    rm -f "$FAIL_SIGN_FILE"
    "$P11_TWO_MESSAGES" --pin-file "$PIN_FILE" "$URI" "$WORK/first.eml" "$WORK/second.eml" \
        2>"$WORK/two.err"
    is "$?" 0 "library caller, card in: both messages are made"
    echo CKR_DEVICE_REMOVED >"$FAIL_SIGN_FILE"
    "$P11_TWO_MESSAGES" --pin-file "$PIN_FILE" "$URI" "$WORK/removed.eml" 2>"$WORK/removed.err"
    is "$?" 69 "library caller: a pulled card gives SMS_ERR_UNAVAILABLE (69)"
    ok "library caller: the message error names the token" \
        grep_file "message 1: PKCS#11 token 'ci' was removed" "$WORK/removed.err"
    ok "library caller: the message is in the failed (abort) phase, error sticky" \
        grep_file "message 1: phase FAILED, error -11 sticky" "$WORK/removed.err"
    ok "library caller: no file is left" test ! -e "$WORK/removed.eml"
fi
rm -f "$FAIL_SIGN_FILE"

done_testing
