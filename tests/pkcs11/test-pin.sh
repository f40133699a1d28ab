#!/bin/bash
# PIN sources, in order: pin-value= and pin-source= in the URI (RFC 7512),
# --pin-file, the reader's PIN pad, the caller's prompt (the CLI asks on
# /dev/tty).  With none of them and no terminal: exit 77 and say how to give
# a PIN.  The PIN never shows up in a message.
. "$(dirname "$0")/../lib/lib.sh"
. "$(dirname "$0")/p11lib.sh"
need_tools

token_init ci || bail_out "cannot create a SoftHSM2 token"
token_put_signer ci p256 01 || bail_out "cannot import p256"
URI="pkcs11:token=ci;object=p256"
A=("${STD_ARGS[@]}")

ok "pin-value= in the URI" sign_ok "$WORK/value.eml" "${A[@]}" --signer "$URI?pin-value=$USER_PIN"
ok "pin-value=: the message verifies" verify_openssl_cms "$WORK/value.eml"
ok "pin-value percent-encoded" sign_ok "$WORK/value-pct.eml" "${A[@]}" --signer "$URI?pin-value=$(printf %s "$USER_PIN" | od -An -tx1 | tr -d " \n" | sed "s/../%&/g")"
ok "pin-source= with a file path" sign_ok "$WORK/source.eml" "${A[@]}" --signer "$URI?pin-source=$PIN_FILE"
ok "pin-source= with a file: URI" sign_ok "$WORK/source-uri.eml" "${A[@]}" --signer "$URI?pin-source=file:$PIN_FILE"
ok "pin-source= with a file:// URI" sign_ok "$WORK/source-uri2.eml" "${A[@]}" --signer "$URI?pin-source=file://$PIN_FILE"
ok "--pin-file" sign_ok "$WORK/pinfile.eml" "${A[@]}" --signer "$URI" --pin-file "$PIN_FILE"
ok "--pin-file: the message verifies" verify_openssl_cms "$WORK/pinfile.eml"

# Order: the URI's PIN wins over --pin-file.
ok "pin-value= wins over a wrong --pin-file" sign_ok "$WORK/order1.eml" "${A[@]}" --signer "$URI?pin-value=$USER_PIN" --pin-file "$BAD_PIN_FILE"
ok "pin-source= wins over a wrong --pin-file" sign_ok "$WORK/order2.eml" "${A[@]}" --signer "$URI?pin-source=$PIN_FILE" --pin-file "$BAD_PIN_FILE"
ok "a wrong pin-source= is used (and refused) even with a right --pin-file" expect_fail "$WORK/order3.eml" 77 \
    "wrong PIN for PKCS#11 token 'ci' \\(from pin-source .*bad-pin.txt in the URI\\)" \
    "${A[@]}" --signer "$URI?pin-source=$BAD_PIN_FILE" --pin-file "$PIN_FILE"

ok "no PIN and no terminal: 77, saying how to give one" expect_fail "$WORK/nopin.eml" 77 \
    "PKCS#11 token 'ci' needs a PIN and none was given .*no terminal.*; give it with --pin-file FILE, or with pin-source=FILE in the URI" \
    "${A[@]}" --signer "$URI"
ok "a pin-source= file that does not exist: 77, naming it" expect_fail "$WORK/nosource.eml" 77 \
    "cannot open PIN file '$WORK/no-such-pin'" \
    "${A[@]}" --signer "$URI?pin-source=$WORK/no-such-pin"
ok "a pin-source= that runs a program is refused (64)" expect_fail "$WORK/pipe.eml" 64 \
    "pin-source '\\|/bin/echo 5678' in the PKCS#11 URI is not supported; use a file path" \
    "${A[@]}" --signer "$URI?pin-source=%7C/bin/echo%205678"
ok "--pin-file that does not exist: 77" expect_fail "$WORK/nofile.eml" 77 \
    "cannot open PIN file" "${A[@]}" --signer "$URI" --pin-file "$WORK/no-such-pin"

for f in "$WORK"/*.err; do
    grep -qF "$USER_PIN" "$f" && { fail "no message shows the PIN ($f does)"; continue 2; }
done
pass "no message shows the PIN"

# The caller's prompt (pin_func), as the agent's D-Bus prompt or the CLI's
# terminal prompt uses it: asked again after a wrong PIN, with a hint.
if [ -n "$P11_TWO_MESSAGES" ]; then
    ok "the prompt is used when no other source is given" \
        "$P11_TWO_MESSAGES" --prompt "$USER_PIN" "$URI" "$WORK/prompt.eml"
    ok "prompt: the message verifies" verify_openssl_cms "$WORK/prompt.eml"
    "$P11_TWO_MESSAGES" --prompt "0000,$USER_PIN" "$URI" "$WORK/prompt2.eml" 2>"$WORK/prompt2.log"
    is "$?" 0 "a wrong PIN at the prompt is asked again, and the right one works"
    ok "the second prompt says the first PIN was wrong" grep_file "prompt 2: PKCS#11 token 'ci' \\| wrong PIN" "$WORK/prompt2.log"
    "$P11_TWO_MESSAGES" --prompt "0000,0001,0002,$USER_PIN" "$URI" "$WORK/prompt3.eml" 2>"$WORK/prompt3.log"
    is "$?" 77 "three wrong PINs at the prompt: 77 (no fourth try)"
    is "$(grep -c '^prompt ' "$WORK/prompt3.log")" 3 "three wrong PINs: the prompt was shown three times"
    "$P11_TWO_MESSAGES" --prompt "" "$URI" "$WORK/prompt4.eml" 2>"$WORK/prompt4.log"
    ok "an empty PIN from the prompt is refused by the token: asked again" grep_file "prompt 2:" "$WORK/prompt4.log"
    "$P11_TWO_MESSAGES" "$URI" "$WORK/cancel.eml" 2>"$WORK/cancel.log"
    is "$?" 77 "no PIN source at all (library caller without a prompt): 77"
else
    skip "prompt tests" "no two-messages program"
fi

done_testing
