#!/bin/bash
# Jobs signed by an application signer (dbus:NAME): the application
# registers org.smimestream.Signer1 with the agent, a job names it, and the
# dbus signer plugin (running in the agent) finds it with ListSigners and
# calls Sign once, with a digest (or, for Ed25519, the short signed
# attributes).  An application that exits before signing: nothing is
# delivered.  Uses tests/dbus-signer/test-app-signer.
. "$(dirname "$0")/agentlib.sh"
[ -n "${TEST_APP_SIGNER:-}" ] && [ -x "$TEST_APP_SIGNER" ] ||
    { echo "1..0 # SKIP test-app-signer (tests/dbus-signer) is not built"; exit 0; }

start_bus
start_smtpd
write_config
start_agent

# start_app NAME KEY ARGS...: a registered application signer; its log in $WORK/NAME.log.
start_app() {
    local name=$1 key=$2
    shift 2
    : >"$WORK/$name.log"
    "$TEST_APP_SIGNER" --key "$PKI/$key.key" --cert "$PKI/$key-chain.pem" --name "$name" \
        --register --log "$WORK/$name.log" "$@" >"$WORK/$name.out" 2>&1 &
    bg_track $!
    wait_for grep -q '^Registered ' "$WORK/$name.log"
}
sign_lines() { grep '^Sign ' "$WORK/$1.log"; }

if start_app scanapp rsa2048; then
    O=$WORK/rsa.out
    client "$O" submit "${MSG_ARGS[@]}" --signer dbus:scanapp --pipe 4M:21
    J=$(job_of "$O")
    is "$(state_of "$O" "$J")" done "dbus:scanapp (RSA): done"
    M=$(stored_by_msgid "$(msgid_of "$O" "$J")")
    ok "openssl cms accepts it" verify_openssl_cms "$M"
    ok "gpgsm accepts it" verify_gpgsm "$M"
    is "$(sign_lines scanapp | wc -l)" 1 "the application saw one Sign call"
    ok "... with at most 64 bytes" bash -c "[ \"\$(grep '^Sign ' '$WORK/scanapp.log' | awk '{ print \$3 }')\" -le 64 ]"
else
    fail "test-app-signer registers with the agent"
fi

if start_app edapp ed25519; then
    O=$WORK/ed.out
    client "$O" submit "${MSG_ARGS[@]}" --signer dbus:edapp --pipe 1M:22
    J=$(job_of "$O")
    is "$(state_of "$O" "$J")" done "dbus:edapp (Ed25519): done"
    M=$(stored_by_msgid "$(msgid_of "$O" "$J")")
    ok "certtool accepts it" verify_certtool "$M"
    ok "one Sign call (ed25519), under 1 KiB" bash -c \
        "[ \"\$(grep -c '^Sign ed25519 ' '$WORK/edapp.log')\" = 1 ] && [ \"\$(grep '^Sign ' '$WORK/edapp.log' | awk '{ print \$3 }')\" -le 1024 ]"
else
    fail "an Ed25519 application signer registers"
fi

if start_app quitter p256 --exit-before-sign; then
    O=$WORK/quit.out
    N0=$(stored_count)
    client "$O" submit "${MSG_ARGS[@]}" --signer dbus:quitter --pipe 2M:23
    J=$(job_of "$O")
    is "$(state_of "$O" "$J")" failed "the application exits before signing: the job fails"
    ok "... its Error names the signer" bash -c "\"$AGENT_CLIENT\" props $J | grep -q '^Error=org.smimestream.Error.Signer'"
    sleep 0.5
    is "$(stored_count)" "$N0" "... and nothing was delivered"
else
    fail "an application with --exit-before-sign registers"
fi
ok "the agent stops on SIGTERM" stop_agent
done_testing
