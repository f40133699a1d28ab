#!/bin/bash
# `smimestream send` end to end against a real SMTP server on loopback
# (tests/smtp/smtpd.py, aiosmtpd, which stores each message byte-exact):
#  - a pipe attachment is delivered and verifies; --progress names phases;
#  - one SIGINT mid-attachment delivers a signed PARTIAL message;
#  - a second SIGINT aborts: exit 75 and nothing is stored;
#  - STARTTLS + AUTH: the right password delivers, a wrong one exits 77;
#  - a refused recipient: exit 69, the refusal is reported, nothing stored.
. "$(dirname "$0")/../lib/lib.sh"

SMTPD="$(dirname "$0")/smtpd.py"
signer_args p256

# start_server NAME [ARGS...]: an smtpd.py storing into $WORK/NAME.store;
# sets PORT and STORE.
start_server() {
    local name=$1
    shift
    STORE=$WORK/$name.store
    mkdir -p "$STORE"
    /usr/bin/python3 "$SMTPD" --port-file "$WORK/$name.port" --store "$STORE" "$@" \
        --log "$WORK/$name.events" >"$WORK/$name.log" 2>&1 &
    bg_track $!
    wait_for test -s "$WORK/$name.port" || bail_out "smtpd.py did not start: $(cat "$WORK/$name.log")"
    PORT=$(cat "$WORK/$name.port")
}

stored_count() { ls "$STORE"/*.eml 2>/dev/null | wc -l; }

# send_bg OUT ARGS...: smimestream send in the background; stderr to OUT.err.
send_bg() {
    local out=$1
    shift
    "$SMIMESTREAM" send "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" "$@" 2>"$out.err" &
    PID=$!
    bg_track "$PID"
}

# ---- delivery from a pipe ------------------------------------------------------
start_server plain
random_file "$WORK/scan.bin" 3000000
cat "$WORK/scan.bin" | timeout 60 "$SMIMESTREAM" send "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" \
    --smtp "smtp://127.0.0.1:$PORT" --attach - --attach-name scan.bin --progress \
    2>"$WORK/plain.err"
rc=$?
is "$rc" 0 "delivery: exit 0"
is "$(stored_count)" 1 "delivery: one message stored"
msg=$(ls "$STORE"/*.eml | head -n1)
ok "delivery: the stored message verifies (openssl cms, gpgsm)" \
    eval 'verify_openssl_cms "$msg" && verify_gpgsm "$msg"'
ok "delivery: the attachment is byte-identical" attachment_is "$msg" 2 "$WORK/scan.bin" scan.bin
ok "delivery: --progress shows the phase and the final line" \
    eval 'grep -q "^send: connecting" "$WORK/plain.err" && grep -q "^smimestream: sent <" "$WORK/plain.err"'

# ---- cancel and abort mid-attachment ---------------------------------------------
# A FIFO whose writer writes 1 MiB and then pauses (start_quiet_writer).


for mode in cancel abort; do
    start_server "$mode"
    fifo=$WORK/$mode.fifo
    mkfifo "$fifo"
    start_quiet_writer "$fifo"
    send_bg "$WORK/$mode" --smtp "smtp://127.0.0.1:$PORT" --attach "$fifo" --attach-name scan.raw
    # The server log shows DATA once streaming has started; then the FIFO drains.
    wait_for grep -q '"DATA"' "$WORK/$mode.events" || diag "no DATA seen in the server log"
    wait_for fifo_drained "$fifo" || diag "the FIFO was not drained"
    sleep 0.3
    if [ "$mode" = cancel ]; then
        kill -INT "$PID"
    else
        /usr/bin/python3 "$MIMETOOL" sigint-twice "$PID"
    fi
    wait_exit "$PID" 30
    rc=$?
    bg_kill "$WRITER"
    if [ "$mode" = cancel ]; then
        is "$rc" 0 "cancel: one SIGINT gives exit 0"
        is "$(stored_count)" 1 "cancel: one message stored"
        msg=$(ls "$STORE"/*.eml 2>/dev/null | head -n1)
        ok "cancel: the stored message verifies" eval '[ -n "$msg" ] && verify_openssl_cms "$msg"'
        ok "cancel: it carries the PARTIAL notice naming the attachment" \
            eval '[ -n "$msg" ] && grep -q "PARTIAL" "$msg" && grep -q "scan.raw" "$msg"'
        ok "cancel: stderr says a PARTIAL message was delivered" grep_file "PARTIAL" "$WORK/$mode.err"
    else
        is "$rc" 75 "abort: a second SIGINT gives exit 75"
        is "$(stored_count)" 0 "abort: nothing stored"
        ok "abort: stderr says nothing was delivered" grep_file "nothing was delivered" "$WORK/$mode.err"
    fi
done

# ---- STARTTLS + AUTH ----------------------------------------------------------------
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/srv.key" -out "$WORK/srv.pem" \
    -days 2 -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    >/dev/null 2>&1 || bail_out "cannot make a server certificate"
start_server auth --tls-cert "$WORK/srv.pem" --tls-key "$WORK/srv.key" --auth "kiosk:s3cret pass"
printf 's3cret pass\n' >"$WORK/good.pw"
printf 'wrong\n' >"$WORK/bad.pw"
for pw in good bad; do
    timeout 60 "$SMIMESTREAM" send "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" \
        --smtp "smtp://localhost:$PORT" --cacert "$WORK/srv.pem" --user kiosk \
        --password-file "$WORK/$pw.pw" 2>"$WORK/auth-$pw.err" </dev/null
    rc=$?
    if [ "$pw" = good ]; then
        is "$rc" 0 "STARTTLS+AUTH: the right password delivers (exit 0)"
        is "$(stored_count)" 1 "STARTTLS+AUTH: one message stored"
    else
        is "$rc" 77 "STARTTLS+AUTH: a wrong password exits 77"
        is "$(stored_count)" 1 "STARTTLS+AUTH: still one message stored"
        ok "STARTTLS+AUTH: the password is not in the error output" \
            eval '! grep -q "wrong" "$WORK/auth-bad.err"'
    fi
done

# ---- a refused recipient ------------------------------------------------------------
printf '{"rcpt": {"nobody@example.org": "550 5.1.1 no such user"}}\n' >"$WORK/rcpt.json"
start_server rcpt --control "$WORK/rcpt.json"
timeout 60 "$SMIMESTREAM" send "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" --cc nobody@example.org \
    --smtp "smtp://127.0.0.1:$PORT" 2>"$WORK/rcpt.err" </dev/null
rc=$?
is "$rc" 69 "refused recipient: exit 69"
is "$(stored_count)" 0 "refused recipient: nothing stored (like msmtp)"
ok "refused recipient: it is named with the server's reply" \
    grep_file "nobody@example.org: REFUSED .550" "$WORK/rcpt.err"

# ---- a malformed Bcc is refused like a malformed To ------------------------------
before=$(stored_count)
timeout 30 "$SMIMESTREAM" send "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" --bcc 'a..b@example.org' \
    --smtp "smtp://127.0.0.1:$PORT" 2>"$WORK/bcc.err" </dev/null
is "$?" 65 "malformed --bcc (a..b@example.org): exit 65, as for --to"
is "$(stored_count)" "$before" "malformed --bcc: nothing stored"

done_testing
