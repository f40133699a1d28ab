#!/bin/bash
# What Submit refuses, each with its own D-Bus error name, before any
# attachment is read: limits, fd types, signers and SMTP profiles the agent
# does not serve, other users; queueing; and how the daemon starts (name
# taken, configuration errors).
. "$(dirname "$0")/agentlib.sh"

start_bus
start_smtpd
write_config "max-jobs-per-sender = 2" "max-running-jobs = 1" "max-attachments = 2" \
    "max-header-bytes = 1024" "max-body-bytes = 2048" "submit-rate = 5" \
    "finished-job-linger-seconds = 30" \
    "" "[pkcs11]" "module-allowlist = /usr/lib/softhsm/libsofthsm2.so"
start_agent
printf 'small attachment\n' >"$WORK/small.txt"
N0=$(stored_count)

# A signer the token cannot open fails the job, not the Submit.
O=$WORK/badsigner.out
client "$O" submit "${MSG_ARGS[@]}" --signer "pkcs11:token=no-such-token;object=x" --prefill 1000
J=$(job_of "$O")
is "$(state_of "$O" "$J")" failed "a pkcs11: token that is not there: the job fails"
ok "its Error is SignerUnavailable" bash -c "\"$AGENT_CLIENT\" props $J | grep -q '^Error=org.smimestream.Error.SignerUnavailable: '"
is "$(awk '$1 == "unread" { print $2 }' "$O")" 1000 "... before reading the attachment (1000 bytes still in the pipe)"

# The baseline for "no fd left behind" is taken after the first pkcs11:
# job: p11-kit's default module list includes OpenSC, whose module opens a
# GDBus connection of its own (g_application_register) when it is loaded,
# once per process.
FD0=$(fd_count "$AGENT_PID")
diag "agent fds after start and a first PKCS#11 module load: $FD0"

# refused NAME DESC ARGS...: Submit with ARGS fails with org.smimestream.Error.NAME
refused() {
    local name=$1 desc=$2
    shift 2
    local out=$WORK/refused-$name-$RANDOM.out
    client "$out" submit "${MSG_ARGS[@]}" "$@"
    local got
    got=$(error_of "$out")
    if [ "$got" = "org.smimestream.Error.$name" ]; then
        pass "$desc: $name"
        diag "$(grep '^error ' "$out" | head -n 1)"
    else
        fail "$desc: $name"
        diag "got: $(head -n 3 "$out")" "$(head -n 3 "$out.err")"
    fi
}

# ---- limits ----------------------------------------------------------------------
refused TooManyAttachments "3 attachments, max-attachments 2" \
    --file "$WORK/small.txt" --file "$WORK/small.txt" --file "$WORK/small.txt"
refused HeaderTooLarge "a 1100-byte subject, max-header-bytes 1024" \
    --subject "$(head -c 1100 /dev/zero | tr '\0' x)" --file "$WORK/small.txt"
refused HeaderTooLarge "40 recipients of 30 bytes" \
    $(for i in $(seq 40); do echo --to "recipient-number-$i@example.org"; done)
refused BodyTooLarge "a 3000-byte body, max-body-bytes 2048" --body-size 3000

# Jobs per sender, and the queue (max-running-jobs 1): two paused pipes,
# then a third Submit.
O=$WORK/perjob.out
client "$O" submit "${MSG_ARGS[@]}" --pipe 1M:1 --pause-at 64K --count 3 --print-state --abort-at 64K
is "$(jobs_of "$O" | wc -l)" 2 "max-jobs-per-sender 2: two jobs accepted"
is "$(error_of "$O")" org.smimestream.Error.TooManyJobs "max-jobs-per-sender 2: the third gets TooManyJobs"
J1=$(jobs_of "$O" | sed -n 1p)
J2=$(jobs_of "$O" | sed -n 2p)
ok "max-running-jobs 1: the first job runs" has_line "$O" "^state $J1 (running|sending)$"
ok "max-running-jobs 1: the second waits in the queue" has_line "$O" "^state $J2 queued$"
is "$(state_of "$O" "$J1") $(state_of "$O" "$J2")" "aborted aborted" "both were aborted at 64 KiB (the queued one after it started)"

# Rate: 5 a minute per sender.
O=$WORK/rate.out
client "$O" submit "${MSG_ARGS[@]}" --file "$WORK/small.txt" --count 6 --sequential
is "$(awk '$1 == "finished" && $3 == "done"' "$O" | wc -l)" 5 "submit-rate 5: five jobs done"
is "$(error_of "$O")" org.smimestream.Error.RateLimited "submit-rate 5: the sixth gets RateLimited"
ok "RateLimited says when to try again" has_line "$O" '^error org.smimestream.Error.RateLimited: .*try again in [0-9]+ s'

# ---- fd types -----------------------------------------------------------------------
refused BadFd "a socket" --socket
refused BadFd "/dev/zero (a character device)" --devzero
refused BadFd "a directory" --dir
refused BadFd "the write end of a pipe" --write-end
refused BadFd "a good file, then a socket" --file "$WORK/small.txt" --socket

# ---- arguments, signers, SMTP profiles --------------------------------------------------
refused InvalidArgs "an unknown option" --opt colour=blue --file "$WORK/small.txt"
O=$WORK/norcpt.out
client "$O" submit --from a@example.org --subject x --prefill 100
is "$(error_of "$O")" org.smimestream.Error.InvalidArgs "no recipients: InvalidArgs"
refused InvalidArgs "a CR/LF in the subject" --subject $'Hi\r\nBcc: evil@example.org'
refused InvalidArgs "digest md5" --digest md5
refused SignerUnavailable "a key file path (the agent opens no caller's path)" --signer "$PKI/rsa2048.key"
refused SignerUnavailable "an unknown configured name" --signer nosuch
refused SignerUnavailable "dbus:NAME that nobody registered" --signer dbus:nobody
refused AccessDenied "a pkcs11: URI with pin-source= (a file)" --signer "pkcs11:token=x?pin-source=/etc/shadow"
refused AccessDenied "a pkcs11: URI with module-path= outside the allowlist" \
    --signer "pkcs11:token=x?module-path=/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so"
refused InvalidArgs "a malformed pkcs11: URI" --signer "pkcs11:token=%zz"
refused SmtpProfile "an unknown SMTP profile" --smtp nosuch
refused SmtpProfile "an SMTP URL with credentials" --smtp "smtp://user:pw@127.0.0.1:25"

# A configured signer other than the default, and the smtp URL form.
O=$WORK/p256.out
client "$O" submit "${MSG_ARGS[@]}" --signer p256 --smtp "$SMTP_URL" --file "$WORK/small.txt"
J=$(job_of "$O")
is "$(state_of "$O" "$J")" done "a named [signer:p256] and an smtp:// URL: done"
M=$(stored_by_msgid "$(msgid_of "$O" "$J")")
ok "it verifies" verify_openssl_cms "$M"
ok "signed with ECDSA" algs_are "$M" sha256 ecdsa-with-SHA256

# ---- another user ----------------------------------------------------------------------
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
    O=$WORK/otheruid.out
    setpriv --reuid=65534 --regid=65534 --clear-groups "$AGENT_CLIENT" submit "${MSG_ARGS[@]}" \
        --prefill 100 >"$O" 2>&1
    is "$(error_of "$O")" org.smimestream.Error.AccessDenied "a caller with another uid is refused (AccessDenied)"
    ok "the refusal says why" has_line "$O" 'serves only its own user.*uid 65534'
    setpriv --reuid=65534 --regid=65534 --clear-groups "$AGENT_CLIENT" list-signers >"$O" 2>&1
    is "$(error_of "$O")" org.smimestream.Error.AccessDenied "... for every method (ListSigners)"
    setpriv --reuid=65534 --regid=65534 --clear-groups "$AGENT_CLIENT" props "$J" >"$O" 2>&1
    is "$(error_of "$O")" org.smimestream.Error.AccessDenied "... and for job properties"
else
    skip "a caller with another uid is refused" "needs root and setpriv"
fi

is "$(stored_count)" $((N0 + 6)) "only the accepted jobs stored anything (5 rate + 1 p256)"
is "$(fd_count "$AGENT_PID")" "$FD0" "the agent's open fds are back to where they started"

# ---- starting the daemon -------------------------------------------------------------------
"$SMIMESTREAM_AGENT" --session --config "$WORK/agent.conf" >"$WORK/second.out" 2>&1
is "$?" 69 "a second agent on the same bus exits 69"
ok "... saying the name is taken" has_line "$WORK/second.out" 'org.smimestream.Agent1 is already owned'
ok "the agent stops on SIGTERM with status 0" stop_agent

# --system (the private bus stands in for the system bus): root, the
# agent's own user and allowed-users are served.
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
    write_config "allowed-users = 65534"
    DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SESSION_BUS_ADDRESS "$SMIMESTREAM_AGENT" --system \
        --config "$WORK/agent.conf" >>"$WORK/agent.log" 2>&1 &
    AGENT_PID=$!
    bg_track $AGENT_PID
    wait_for "$AGENT_CLIENT" list-signers >/dev/null 2>&1
    O=$WORK/sys-allowed.out
    setpriv --reuid=65534 --regid=65534 --clear-groups "$AGENT_CLIENT" submit "${MSG_ARGS[@]}" \
        --prefill 100 >"$O" 2>&1
    is "$(state_of "$O" "$(job_of "$O")")" done "--system: a user in allowed-users is served"
    O=$WORK/sys-refused.out
    setpriv --reuid=1 --regid=1 --clear-groups "$AGENT_CLIENT" submit "${MSG_ARGS[@]}" \
        --prefill 100 >"$O" 2>&1
    is "$(error_of "$O")" org.smimestream.Error.AccessDenied "--system: another user is refused"
    O=$WORK/sys-root.out
    client "$O" submit "${MSG_ARGS[@]}" --prefill 100
    is "$(state_of "$O" "$(job_of "$O")")" done "--system: root is served"
    ok "the --system agent stops on SIGTERM" stop_agent
else
    skip "--system: allowed-users" "needs root and setpriv"
fi

printf '[agent]\nmax-jobs-per-sendr = 3\n' >"$WORK/typo.conf"
"$SMIMESTREAM_AGENT" --session --config "$WORK/typo.conf" >"$WORK/typo.out" 2>&1
is "$?" 78 "an unknown key: exit 78"
ok "... naming the group and key" has_line "$WORK/typo.out" 'typo.conf: \[agent\] max-jobs-per-sendr: unknown key'
printf '[agent]\nmax-running-jobs = 0\n' >"$WORK/range.conf"
"$SMIMESTREAM_AGENT" --session --config "$WORK/range.conf" >"$WORK/range.out" 2>&1
is "$?" 78 "a value out of range: exit 78"
printf '[signer:x]\nspec = pkcs11:token=t?module-path=/tmp/evil.so\n' >"$WORK/mod.conf"
"$SMIMESTREAM_AGENT" --session --config "$WORK/mod.conf" >"$WORK/mod.out" 2>&1
is "$?" 78 "a configured pkcs11: signer outside the module allowlist: exit 78"
"$SMIMESTREAM_AGENT" --session --config "$WORK/missing.conf" >"$WORK/missing.out" 2>&1
is "$?" 78 "--config naming a missing file: exit 78"
"$SMIMESTREAM_AGENT" --session --system >"$WORK/usage.out" 2>&1
is "$?" 64 "--session and --system together: exit 64"

# No configuration file at all: sane defaults, it serves.
mkdir -p "$WORK/empty-home"
XDG_CONFIG_HOME=$WORK/empty-home "$SMIMESTREAM_AGENT" --session >"$WORK/noconf.out" 2>&1 &
NOCONF=$!
bg_track $NOCONF
ok "with no configuration file the agent starts and answers" wait_for "$AGENT_CLIENT" list-signers
O=$WORK/noconf-submit.out
client "$O" submit "${MSG_ARGS[@]}" --prefill 100
is "$(error_of "$O")" org.smimestream.Error.SignerUnavailable "without a configuration, a job needs a signer option"
kill -TERM $NOCONF
wait_exit $NOCONF 10
is "$?" 0 "and it stops cleanly"
done_testing
