#!/bin/bash
# PIN prompts for PKCS#11 tokens (SoftHSM2): the agent asks
# org.smimestream.PinPrompt1.AskPin on the object the job names
# (pin-prompt) or on a registered prompter, caches the PIN per token with
# an idle and a maximum lifetime, never caches a wrong one, never logs it,
# and a wrong PIN fails the job before any attachment byte is read.
. "$(dirname "$0")/agentlib.sh"
. "$SRC_DIR/tests/pkcs11/p11lib.sh"
need_tools

for t in wrong cache reg none slow; do
    token_init "$t" || bail_out "cannot create SoftHSM2 token $t"
    token_put_signer "$t" p256 01 || bail_out "cannot import p256 into $t"
done
uri() { echo "pkcs11:token=$1;object=p256"; }

start_bus
start_smtpd
write_config "pin-prompt-timeout = 2" \
    "" "[pin-cache]" "idle-ttl = 4" "max-ttl = 60" \
    "" "[pkcs11]" "module-allowlist = $SOFTHSM_LIB"
start_agent

askpins() { grep -c '^askpin ' "$1"; }

# ---- a wrong PIN: the job fails before reading the attachment ---------------------------
O=$WORK/wrong.out
client "$O" submit "${MSG_ARGS[@]}" --signer "$(uri wrong)" --pin-answers 0000 --prefill 4096
J=$(job_of "$O")
is "$(state_of "$O" "$J")" failed "wrong PIN: the job fails"
ok "wrong PIN: the prompt was asked for token 'wrong' (its label)" has_line "$O" '^askpin wrong\|$'
ok "wrong PIN: asked again with a hint saying the PIN was wrong" has_line "$O" '^askpin wrong\|wrong PIN'
ok "wrong PIN: Error is PinRefused and says the PIN was wrong" \
    bash -c "\"$AGENT_CLIENT\" props $J | grep -q \"^Error=org.smimestream.Error.PinRefused: wrong PIN for PKCS#11 token 'wrong'\""
is "$(awk '$1 == "unread" { print $2 }' "$O")" 4096 "wrong PIN: not one attachment byte was read (4096 still in the pipe)"
is "$(prop "$J" BytesRead)" 0 "wrong PIN: BytesRead 0"

# ---- the right PIN from the job's own prompt; then the cache ----------------------------
N0=$(stored_count)
O=$WORK/right.out
client "$O" submit "${MSG_ARGS[@]}" --signer "$(uri cache)" --pin-answers "$USER_PIN" --pipe 1M:5
J=$(job_of "$O")
is "$(state_of "$O" "$J")" done "the right PIN from pin-prompt: done"
is "$(askpins "$O")" 1 "AskPin was called once"
M=$(stored_by_msgid "$(msgid_of "$O" "$J")")
ok "the message (signed on the token) verifies" verify_openssl_cms "$M"

O=$WORK/cached.out
client "$O" submit "${MSG_ARGS[@]}" --signer "$(uri cache)" --pin-answers cancel --pipe 1M:6
J=$(job_of "$O")
is "$(state_of "$O" "$J")" done "a second job on the same token: done"
is "$(askpins "$O")" 0 "... from the cache: AskPin not called"

O=$WORK/allowlisted.out
client "$O" submit "${MSG_ARGS[@]}" --signer "$(uri cache)?module-path=$SOFTHSM_LIB" \
    --pin-answers cancel --prefill 100
is "$(state_of "$O" "$(job_of "$O")")" done "module-path= inside the allowlist is served (cached PIN)"

sleep 5
O=$WORK/expired.out
client "$O" submit "${MSG_ARGS[@]}" --signer "$(uri cache)" --pin-answers "$USER_PIN" --prefill 100
is "$(state_of "$O" "$(job_of "$O")")" done "after idle-ttl (4 s): done"
is "$(askpins "$O")" 1 "after idle-ttl the cached PIN is gone: AskPin asked again"

# ---- a wrong PIN is never cached ----------------------------------------------------------
O=$WORK/wrong2.out
client "$O" submit "${MSG_ARGS[@]}" --signer "$(uri wrong)" --pin-answers "0000,$USER_PIN" --prefill 100
is "$(state_of "$O" "$(job_of "$O")")" done "a wrong PIN, then the right one at the second ask: done"
O=$WORK/wrong3.out
client "$O" submit "${MSG_ARGS[@]}" --signer "$(uri wrong)" --pin-answers cancel --prefill 100
is "$(state_of "$O" "$(job_of "$O")")" done "... and the right one (not the wrong one) was cached"
is "$(askpins "$O")" 0 "... AskPin not called"

# ---- a registered prompter -----------------------------------------------------------------
"$AGENT_CLIENT" prompter --answers "$USER_PIN" --log "$WORK/prompter.log" >"$WORK/prompter.out" 2>&1 &
PROMPTER=$!
bg_track $PROMPTER
wait_for has_line "$WORK/prompter.out" '^registered' 2>/dev/null
O=$WORK/registered.out
client "$O" submit "${MSG_ARGS[@]}" --signer "$(uri reg)" --prefill 100
is "$(state_of "$O" "$(job_of "$O")")" done "no pin-prompt in the job: the registered prompter answers"
is "$(grep -c '^askpin reg|' "$WORK/prompter.log")" 1 "the registered prompter was asked once, for token 'reg'"
bg_kill $PROMPTER

# ---- no prompter, a declined prompt, a prompt that does not answer --------------------------
sleep 0.3
O=$WORK/noprompt.out
client "$O" submit "${MSG_ARGS[@]}" --signer "$(uri none)" --prefill 100
J=$(job_of "$O")
is "$(state_of "$O" "$J")" failed "no prompt anywhere: the job fails"
ok "... saying how to give a PIN" bash -c "\"$AGENT_CLIENT\" props $J | grep -q '^Error=org.smimestream.Error.PinRefused: .*no PIN prompt: pass pin-prompt'"
O=$WORK/declined.out
client "$O" submit "${MSG_ARGS[@]}" --signer "$(uri none)" --pin-answers cancel --prefill 100
J=$(job_of "$O")
is "$(state_of "$O" "$J")" failed "a declined prompt: the job fails"
ok "... PinRefused, declined" bash -c "\"$AGENT_CLIENT\" props $J | grep -q '^Error=org.smimestream.Error.PinRefused: .*declined'"
O=$WORK/silent.out
client "$O" submit "${MSG_ARGS[@]}" --signer "$(uri slow)" --pin-answers noreply --prefill 100
J=$(job_of "$O")
is "$(state_of "$O" "$J")" failed "a prompt that never answers: the job fails after pin-prompt-timeout"
ok "... saying so" bash -c "\"$AGENT_CLIENT\" props $J | grep -q 'did not answer within 2 s'"

# ---- Abort while the prompt is open -------------------------------------------------------------
O=$WORK/abortprompt.out
"$AGENT_CLIENT" submit "${MSG_ARGS[@]}" --signer "$(uri slow)" --pin-answers noreply --prefill 100 \
    >"$O" 2>&1 &
CPID=$!
wait_for has_line "$O" '^askpin ' 2>/dev/null
J=$(job_of "$O")
kill -9 $CPID
wait $CPID 2>/dev/null
ok "the sender leaves while its prompt is open: the job aborts at once" \
    wait_for bash -c "\"$AGENT_CLIENT\" props $J | grep -q '^State=aborted'"

ok "the PIN never appears in the agent's log" no_secret "$WORK/agent.log" "$USER_PIN"
ok "the agent stops on SIGTERM" stop_agent
done_testing
