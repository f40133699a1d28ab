#!/bin/bash
# `smimestream submit` against a real smimestream-agent on a private bus:
#  - a pipe attachment goes as an fd; the stored message verifies and the
#    attachment is byte-identical; --progress follows the job;
#  - one SIGINT mid-attachment: Job1.Cancel, a signed PARTIAL message is
#    delivered, exit 0; a second SIGINT: Job1.Abort, nothing stored, exit 75;
#  - an encrypted key whose passphrase submit serves from --pin-file through
#    PinPrompt1; a wrong one gives exit 77 (PinRefused);
#  - a key-file path as --signer is refused by the agent (exit 69), and
#    with no agent on the bus submit says so (exit 69).
. "$(dirname "$0")/agentlib.sh"

start_bus
start_smtpd
# enc2 is the same key under another name: the agent caches a passphrase
# per key, so the wrong-passphrase case needs one that was never unlocked.
cp "$PKI/rsa2048-enc.key" "$WORK/enc2.key"
write_config "" "[signer:enc]" "spec = $PKI/rsa2048-enc.key" "cert = $PKI/rsa2048-chain.pem" \
    "" "[signer:enc2]" "spec = $WORK/enc2.key" "cert = $PKI/rsa2048-chain.pem"

# No agent yet.
timeout 30 "$SMIMESTREAM" submit "${MSG_ARGS[@]}" --signer default --smtp default \
    2>"$WORK/noagent.err" </dev/null
is "$?" 69 "no agent on the bus: exit 69"
ok "no agent on the bus: says to start smimestream-agent" grep_file "start smimestream-agent" "$WORK/noagent.err"

start_agent

# ---- delivery from a pipe -------------------------------------------------------
random_file "$WORK/scan.bin" 3000000
cat "$WORK/scan.bin" | timeout 60 "$SMIMESTREAM" submit "${MSG_ARGS[@]}" --signer p256 \
    --smtp default --attach - --attach-name scan.bin --progress 2>"$WORK/plain.err"
is "$?" 0 "delivery: exit 0"
is "$(stored_count)" 1 "delivery: one message stored"
msg=$(ls "$STORE"/*.eml | head -n1)
ok "delivery: the stored message verifies (openssl cms, gpgsm)" \
    eval 'verify_openssl_cms "$msg" && verify_gpgsm "$msg"'
ok "delivery: the attachment is byte-identical" attachment_is "$msg" 2 "$WORK/scan.bin" scan.bin
ok "delivery: --progress names the job and its end" \
    eval 'grep -q "submitted as /org/smimestream/Agent1/jobs/" "$WORK/plain.err" && grep -q "^submit: done" "$WORK/plain.err"'

# ---- cancel and abort ------------------------------------------------------------

for mode in cancel abort; do
    before=$(stored_count)
    fifo=$WORK/$mode.fifo
    mkfifo "$fifo"
    start_quiet_writer "$fifo"
    "$SMIMESTREAM" submit "${MSG_ARGS[@]}" --signer default --smtp default \
        --attach "$fifo" --attach-name scan.raw 2>"$WORK/$mode.err" </dev/null &
    PID=$!
    bg_track "$PID"
    sleep 0.5
    wait_for fifo_drained "$fifo" || diag "the FIFO was not drained"
    sleep 0.3
    if [ "$mode" = cancel ]; then
        kill -INT "$PID"
    else
        /usr/bin/python3 "$MIMETOOL" sigint-twice "$PID"
    fi
    wait_exit "$PID" 60
    rc=$?
    bg_kill "$WRITER"
    if [ "$mode" = cancel ]; then
        is "$rc" 0 "cancel: one SIGINT gives exit 0"
        is "$(stored_count)" $((before + 1)) "cancel: one more message stored"
        msg=$(ls -t "$STORE"/*.eml | head -n1)
        ok "cancel: it verifies and carries the PARTIAL notice" \
            eval 'verify_openssl_cms "$msg" && grep -q PARTIAL "$msg"'
        ok "cancel: submit says a PARTIAL message was delivered" grep_file "PARTIAL" "$WORK/$mode.err"
    else
        is "$rc" 75 "abort: a second SIGINT gives exit 75"
        is "$(stored_count)" "$before" "abort: nothing stored"
    fi
done

# ---- PINs through PinPrompt1 -------------------------------------------------------
before=$(stored_count)
timeout 60 "$SMIMESTREAM" submit "${MSG_ARGS[@]}" --signer enc --smtp default \
    --pin-file "$PKI/pass.txt" 2>"$WORK/pin.err" </dev/null
is "$?" 0 "encrypted key, --pin-file served through PinPrompt1: exit 0"
is "$(stored_count)" $((before + 1)) "encrypted key: delivered"
timeout 60 "$SMIMESTREAM" submit "${MSG_ARGS[@]}" --signer enc2 --smtp default \
    --pin-file "$PKI/wrongpass.txt" 2>"$WORK/wrongpin.err" </dev/null
is "$?" 77 "wrong passphrase: exit 77"
ok "wrong passphrase: the passphrase is not in the output" eval '! grep -q wrong "$WORK/wrongpin.err"'

# ---- refused by the agent ------------------------------------------------------------
timeout 30 "$SMIMESTREAM" submit "${MSG_ARGS[@]}" --signer "$PKI/rsa2048.key" --smtp default \
    2>"$WORK/keyfile.err" </dev/null
is "$?" 69 "a key-file path as --signer: refused by the agent, exit 69"
ok "a key-file path: the agent's reason is shown" grep_file "SignerUnavailable" "$WORK/keyfile.err"

ok "the agent exits cleanly" stop_agent
done_testing
