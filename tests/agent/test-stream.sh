#!/bin/bash
# Send jobs through smimestream-agent: a 64 MiB pipe, Cancel and Abort
# halfway, the sender dying with its pipe open, a regular file that may
# finish without its sender, introspection, the signer registry, and
# finished jobs that linger and then go away.
. "$(dirname "$0")/agentlib.sh"

start_bus
start_smtpd
write_config "finished-job-linger-seconds = 8"
start_agent
FD0=$(fd_count "$AGENT_PID")

# ---- 64 MiB from a pipe ------------------------------------------------------------
O=$WORK/big.out
T0=$(date +%s.%N)
client "$O" submit "${MSG_ARGS[@]}" --pipe 64M:11 --name scan.bin --type application/octet-stream
T1=$(date +%s.%N)
J=$(job_of "$O")
ok "Submit answers with a job object path" has_line "$O" '^job /org/smimestream/Agent1/jobs/[0-9]+$'
is "$(state_of "$O" "$J")" done "64 MiB pipe: Finished says done"
MSGID=$(msgid_of "$O" "$J")
ok "Finished carries the Message-ID" test -n "$MSGID" -a "$MSGID" != -
ok "Finished's detail lists the recipient as accepted" has_line "$O" "^detail $J office@example.org: accepted \\(250 "
SIGNALS=$(summary_of "$O" "$J" signals)
GAP=$(summary_of "$O" "$J" min-gap-ms)
SPAN=$(summary_of "$O" "$J" span-ms)
diag "64 MiB job: $SIGNALS Progress signals over $SPAN ms (the job took $(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }') s), shortest gap as received $GAP ms"
ok "Progress signals arrived" test "${SIGNALS:-0}" -ge 3
# Emitted at least 100 ms apart; as received, bus scheduling may bunch two.
ok "at most 10 Progress signals a second" \
    awk -v n="$SIGNALS" -v s="$SPAN" 'BEGIN { exit !((n - 1) * 100 <= s + 100) }'
is "$(summary_of "$O" "$J" max)" 67108864 "the last Progress says 64 MiB"
is "$(awk -v j="$J" '$1 == "statechange" && $2 == j { printf "%s ", $3 }' "$O")" "running sending done " \
    "PropertiesChanged reported State running, sending, done"
M=$(stored_by_msgid "$MSGID")
ok "the server stored the message with that Message-ID" test -n "$M"
ok "openssl cms -verify accepts it" verify_openssl_cms "$M"
is "$(attachment_hash "$M" 2)" "$(gen_hash 64M 11)" "the attachment is the 64 MiB the writer sent"
is "$(prop "$J" State)" done "State property: done"
is "$(prop "$J" BytesRead)" 67108864 "BytesRead property: 64 MiB"
is "$(prop "$J" MessageId)" "$MSGID" "MessageId property"
is "$(prop "$J" Error)" "" "Error property empty"
FIRST_JOB=$J

# ---- Cancel halfway: the signed partial message is delivered ---------------------------
O=$WORK/cancel.out
N0=$(stored_count)
client "$O" submit "${MSG_ARGS[@]}" --pipe 64M:12 --name scan.bin --pause-at 32M --cancel-at 32M
J=$(job_of "$O")
is "$(state_of "$O" "$J")" partial "Cancel halfway: Finished says partial"
M=$(stored_by_msgid "$(msgid_of "$O" "$J")")
ok "Cancel: the stored message verifies" verify_openssl_cms "$M"
ok "Cancel: it carries the PARTIAL notice" grep_file 'This message is PARTIAL' "$M.d/cms.content"
is "$(attachment_hash "$M" 2)" "$(gen_hash 32M 12)" "Cancel: the attachment holds the first 32 MiB"
is "$(stored_count)" $((N0 + 1)) "Cancel: one message stored"

# ---- Abort halfway: nothing is delivered -------------------------------------------------
O=$WORK/abort.out
N0=$(stored_count)
client "$O" submit "${MSG_ARGS[@]}" --pipe 64M:13 --pause-at 32M --abort-at 32M
J=$(job_of "$O")
is "$(state_of "$O" "$J")" aborted "Abort halfway: Finished says aborted"
ok "Abort: the detail says why" has_line "$O" "^detail $J error: .*Abort"
is "$(prop "$J" Error | cut -d: -f1)" org.smimestream.Error.Aborted "Abort: Error property names org.smimestream.Error.Aborted"
sleep 0.5
is "$(stored_count)" "$N0" "Abort: nothing stored"
ok "Abort: the server saw the connection drop during DATA" \
    grep -q '"in_data": true' "$WORK/smtpd.log"

# ---- the server refuses a recipient: per-recipient results, nothing read -----------------
echo '{"rcpt": {"office@example.org": "550 5.1.1 no such user here"}}' >"$WORK/smtpd.ctl"
O=$WORK/refused.out
client "$O" submit "${MSG_ARGS[@]}" --cc second@example.org --prefill 1000
rm -f "$WORK/smtpd.ctl"
J=$(job_of "$O")
is "$(state_of "$O" "$J")" failed "a refused recipient: the job fails (nothing is sent)"
ok "Finished's detail: the refused recipient with the server's reply" \
    has_line "$O" "^detail $J office@example.org: refused \\(550 5.1.1 no such user here\\)"
ok "Finished's detail: the other recipient, accepted" has_line "$O" "^detail $J second@example.org: accepted"
ok "Error names SmtpRefused" bash -c "\"$AGENT_CLIENT\" props $J | grep -q '^Error=org.smimestream.Error.SmtpRefused: '"
is "$(awk '$1 == "unread" { print $2 }' "$O")" 1000 "the attachment was not read (the envelope failed first)"

# ---- the sender is killed while its pipe is open ---------------------------------------------
# kill_sender WRITER LABEL: the client (with its writer WRITER) submits a
# pipe that pauses at 16 MiB, is killed there, and the job must abort.
kill_sender() {
    local writer=$1 label=$2 out=$WORK/kill-$1.out
    local n0
    n0=$(stored_count)
    "$AGENT_CLIENT" submit "${MSG_ARGS[@]}" --pipe 64M:14 --pause-at 16M --writer "$writer" --hold \
        >"$out" 2>"$out.err" &
    local cpid=$!
    wait_for has_line "$out" '^job ' 2>/dev/null || { fail "$label: submitted"; kill -9 $cpid; return; }
    local j
    j=$(job_of "$out")
    wait_for bash -c "[ \"\$(\"$AGENT_CLIENT\" props $j | sed -n 's/^BytesRead=//p')\" -ge 16777216 ]" ||
        fail "$label: the agent read the first 16 MiB"
    if [ "$writer" = child ]; then
        "$AGENT_CLIENT" abort "$j" >"$WORK/foreign-abort.out" 2>&1
        is "$(error_of "$WORK/foreign-abort.out")" org.smimestream.Error.AccessDenied \
            "another client may not abort someone else's job"
    fi
    kill -9 $cpid
    wait $cpid 2>/dev/null
    ok "$label: the job aborts" wait_for bash -c "[ \"\$(\"$AGENT_CLIENT\" props $j | sed -n 's/^State=//p')\" = aborted ]"
    ok "$label: Error says the sender left" bash -c "\"$AGENT_CLIENT\" props $j | grep -q '^Error=org.smimestream.Error.Aborted: the sender left the bus'"
    sleep 0.5
    is "$(stored_count)" "$n0" "$label: nothing stored"
}
kill_sender child "sender killed, its writer process still holds the pipe open"
kill_sender self "sender killed, it was the writer (end-of-file and leaving the bus race)"

# ---- a regular file may finish without its sender -------------------------------------------
random_file "$WORK/file.bin" $((24 * 1024 * 1024))
O=$WORK/file.out
N0=$(stored_count)
"$AGENT_CLIENT" submit "${MSG_ARGS[@]}" --file "$WORK/file.bin" --name file.bin --hold >"$O" 2>&1 &
CPID=$!
wait_for has_line "$O" '^job ' 2>/dev/null
J=$(job_of "$O")
kill -9 $CPID
wait $CPID 2>/dev/null
ok "sender gone, regular file: the job still finishes" \
    wait_for bash -c "[ \"\$(\"$AGENT_CLIENT\" props $J | sed -n 's/^State=//p')\" = done ]"
is "$(stored_count)" $((N0 + 1)) "sender gone, regular file: the message is stored"
M=$(stored_by_msgid "$(prop "$J" MessageId)")
is "$(attachment_hash "$M" 2)" "$(sha256sum <"$WORK/file.bin" | cut -d' ' -f1)" "regular file: the attachment is the whole file"

# ---- introspection is the contract ------------------------------------------------------------
# has_block XMLFILE IFACE OUT: OUT holds IFACE's <interface> element from
# XMLFILE, byte for byte.
has_block() {
    /usr/bin/python3 - "$@" <<'PY'
import re, sys
xml, iface, out = sys.argv[1:4]
m = re.search(r'<interface name="%s">.*?</interface>' % re.escape(iface), open(xml).read(), re.S)
sys.exit(0 if m and m.group(0) in open(out).read() else 1)
PY
}
introspect() {
    dbus-send --session --print-reply=literal --dest=org.smimestream.Agent1 "$1" \
        org.freedesktop.DBus.Introspectable.Introspect
}
introspect /org/smimestream/Agent1 >"$WORK/intro-agent.xml" 2>&1
introspect "$J" >"$WORK/intro-job.xml" 2>&1
XML=$SRC_DIR/dbus/org.smimestream.Agent1.xml
ok "Introspect of the agent carries Agent1 exactly as dbus/org.smimestream.Agent1.xml" \
    has_block "$XML" org.smimestream.Agent1 "$WORK/intro-agent.xml"
ok "Introspect of a job carries Job1 exactly as the XML" \
    has_block "$XML" org.smimestream.Job1 "$WORK/intro-job.xml"
ok "gdbus can introspect the agent" bash -c \
    "gdbus introspect --session --dest org.smimestream.Agent1 --object-path /org/smimestream/Agent1 | grep -q 'Submit(in  a{sv} message'"

# ---- the signer registry -------------------------------------------------------------------
"$AGENT_CLIENT" list-signers >"$WORK/signers0.out" 2>&1
ok "ListSigners lists the configured signers (kind config)" \
    has_line "$WORK/signers0.out" '^signer config:default kind=config name=default$'
"$AGENT_CLIENT" register-signer scanner-app >"$WORK/reg.out" 2>&1 &
REG_PID=$!
bg_track $REG_PID
wait_for has_line "$WORK/reg.out" '^registered ' 2>/dev/null
ID=$(awk '$1 == "registered" { print $2 }' "$WORK/reg.out")
"$AGENT_CLIENT" list-signers >"$WORK/signers1.out" 2>&1
ok "RegisterSigner: ListSigners shows it (kind dbus, bus-name, path)" \
    has_line "$WORK/signers1.out" "^signer $ID kind=dbus name=scanner-app bus-name=:[0-9.]+ path=/test/signer$"
"$AGENT_CLIENT" register-signer scanner-app >"$WORK/reg2.out" 2>&1 &
RP2=$!
wait_for has_line "$WORK/reg2.out" '^error ' 2>/dev/null
kill $RP2 2>/dev/null
is "$(error_of "$WORK/reg2.out")" org.smimestream.Error.InvalidArgs "a second signer of the same name is refused"
"$AGENT_CLIENT" unregister-signer "$ID" >"$WORK/unreg.out" 2>&1
is "$(error_of "$WORK/unreg.out")" org.smimestream.Error.AccessDenied "only its owner may unregister a signer"
kill $REG_PID
ok "the registration ends when the application leaves the bus" \
    wait_for bash -c "! \"$AGENT_CLIENT\" list-signers | grep -q scanner-app"
"$AGENT_CLIENT" register-signer own-unreg --unregister >"$WORK/reg3.out" 2>&1 &
RP3=$!
wait_for has_line "$WORK/reg3.out" '^unregistered' 2>/dev/null
ok "UnregisterSigner by the owner" has_line "$WORK/reg3.out" '^unregistered'
kill $RP3 2>/dev/null

# ---- finished jobs linger, then go away -------------------------------------------------------
ok "a finished job goes away after finished-job-linger-seconds" \
    wait_for bash -c "\"$AGENT_CLIENT\" props $FIRST_JOB | grep -q '^error org.freedesktop.DBus.Error.UnknownObject'"

# ---- no fd left behind ------------------------------------------------------------------------
is "$(fd_count "$AGENT_PID")" "$FD0" "the agent's open fds are back to where they started ($FD0)"

# ---- SIGTERM with a job running: it is aborted, the agent exits 0 -------------------------------
O=$WORK/term.out
N0=$(stored_count)
"$AGENT_CLIENT" submit "${MSG_ARGS[@]}" --pipe 64M:15 --pause-at 8M >"$O" 2>&1 &
CPID=$!
wait_for has_line "$O" '^job ' 2>/dev/null
J=$(job_of "$O")
wait_for bash -c "[ \"\$(\"$AGENT_CLIENT\" props $J | sed -n 's/^BytesRead=//p')\" -ge 8388608 ]"
ok "SIGTERM with a job running: the agent exits 0" stop_agent
wait_exit $CPID 20
is "$(state_of "$O" "$J")" aborted "SIGTERM: the client got Finished(aborted)"
ok "SIGTERM: the detail says the agent is shutting down" has_line "$O" "^detail $J error: .*shutting down"
is "$(stored_count)" "$N0" "SIGTERM: nothing stored"
done_testing
