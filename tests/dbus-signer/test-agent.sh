#!/bin/bash
# dbus:NAME: the plugin finds a registered application signer through
# org.smimestream.Agent1.ListSigners.  Runs against mock-agent (the signer
# registry of Agent1 only), and against the real smimestream-agent when it is
# built.  Also checks the test programs the agent's own tests use
# (test-pin-prompt; test-app-signer --register).
. "$(dirname "$0")/dbuslib.sh"

ATT=$WORK/scan.bin
random_file "$ATT" 300000
MSG_ARGS=("${STD_ARGS[@]}" --attach "$ATT")

# agent_suite LABEL: the checks, with an agent already on the bus.
agent_suite() {
    local label=$1
    local app=scanner_$label
    if ! start_app "$app" rsa2048 --register; then
        fail "$label: test-app-signer --register registers with the agent"
        return
    fi
    pass "$label: test-app-signer --register registers with the agent"
    ok "$label: it got an id back" grep_file '^Registered .+' "$WORK/$app.log"

    local M=$WORK/$label-byname.eml
    ok "$label: smimestream sign --signer dbus:$app" sign_ok "$M" "${MSG_ARGS[@]}" --signer "dbus:$app"
    ok "$label: one Sign call, rsa-pkcs1-sha256, at most 64 bytes" one_sign "$WORK/$app.log" rsa-pkcs1-sha256 64
    ok "$label: openssl cms accepts it" verify_openssl_cms "$M"
    ok "$label: gpgsm accepts it" verify_gpgsm "$M"

    # A second application with an EdDSA key.
    local app2=eddsa_$label
    if start_app "$app2" ed25519 --register; then
        M=$WORK/$label-eddsa.eml
        ok "$label: dbus:$app2 (Ed25519) signs" sign_ok "$M" "${MSG_ARGS[@]}" --signer "dbus:$app2"
        ok "$label: one Sign call, ed25519, under 1 KiB" one_sign "$WORK/$app2.log" ed25519 1024
        ok "$label: certtool accepts it" verify_certtool "$M"
    else
        fail "$label: a second application registers"
    fi

    ok "$label: an unknown NAME: 69, naming the registered ones and the agent" \
        expect_sign_fail "$WORK/$label-unknown.eml" 69 \
        "application signer 'nosuch' is unavailable: no application registered a signer of that name with the smimestream agent \(registered: .*'$app'" \
        "${MSG_ARGS[@]}" --signer "dbus:nosuch"

    # The application leaves: its registration ends with it.
    local pidvar="${app}_PID"
    bg_kill "${!pidvar}"
    ok "$label: after the application exits, dbus:$app is unavailable (69)" \
        wait_for expect_sign_fail "$WORK/$label-gone.eml" 69 "'$app' is unavailable" \
        "${MSG_ARGS[@]}" --signer "dbus:$app"

    # An application that exits when asked to sign, found by name.
    local app3=quitter_$label
    if start_app "$app3" p256 --register --exit-before-sign; then
        ok "$label: dbus:$app3 exits before signing: 69/70, no file" \
            expect_sign_fail "$WORK/$label-quit.eml" '69|70' "left the D-Bus session bus without signing" \
            "${MSG_ARGS[@]}" --signer "dbus:$app3"
    else
        fail "$label: an application with --exit-before-sign registers"
    fi
}

# ---- the mock agent -----------------------------------------------------------
if start_bg MOCK "$MOCK_AGENT" --log "$WORK/mock.log"; then
    agent_suite mock
    ok "mock: the registrations ended when the applications left" grep_file '^Gone ' "$WORK/mock.log"
    bg_kill "$MOCK_PID"
else
    fail "mock-agent starts"
fi

# ---- test-pin-prompt (for the agent's PIN tests) --------------------------------
if start_bg PROMPT "$TEST_PIN_PROMPT" --pin 'the pin 1234' --log "$WORK/prompt.log"; then
    got=$(dbus-send --session --print-reply=literal --dest="$PROMPT_BUS" "$PROMPT_PATH" \
        org.smimestream.PinPrompt1.AskPin string:'ci token' string:'wrong PIN, 2 tries left' 2>&1)
    is "$(echo $got)" 'the pin 1234' "test-pin-prompt answers AskPin with its PIN"
    is "$(cat "$WORK/prompt.log")" 'AskPin ci token|wrong PIN, 2 tries left' "test-pin-prompt logs the call (token|hint, never the PIN)"
    ok "test-pin-prompt introspects as PinPrompt1" bash -c \
        "gdbus introspect --session --dest '$PROMPT_BUS' --object-path '$PROMPT_PATH' | grep -q 'AskPin'"
else
    fail "test-pin-prompt starts"
fi
if start_bg PROMPT2 "$TEST_PIN_PROMPT" --cancel --log "$WORK/prompt2.log"; then
    out=$(dbus-send --session --print-reply --dest="$PROMPT2_BUS" "$PROMPT_PATH" \
        org.smimestream.PinPrompt1.AskPin string:tok string: 2>&1)
    ok "test-pin-prompt --cancel answers org.smimestream.Error.Cancelled" grep -q 'org.smimestream.Error.Cancelled' <<<"$out"
else
    fail "test-pin-prompt --cancel starts"
fi

# The application signer's Certificates property, as any client sees it.
if start_app props p256; then
    ok "test-app-signer: Properties.Get(Certificates) is aay with two certificates" bash -c \
        "busctl --user get-property '$props_BUS' '$SIGNER_PATH' org.smimestream.Signer1 Certificates 2>/dev/null | grep -q '^aay 2 ' ||
         gdbus call --session --dest '$props_BUS' --object-path '$SIGNER_PATH' --method org.freedesktop.DBus.Properties.Get org.smimestream.Signer1 Certificates | grep -q '<\[\[byte'"
else
    fail "test-app-signer starts (props)"
fi

# ---- the real agent, when it is built ---------------------------------------------
if [ -x "$SMIMESTREAM_AGENT" ]; then
    export XDG_CONFIG_HOME=$WORK/config XDG_RUNTIME_DIR=$WORK/run
    mkdir -p "$XDG_CONFIG_HOME" "$XDG_RUNTIME_DIR"
    chmod 700 "$XDG_RUNTIME_DIR"
    "$SMIMESTREAM_AGENT" --session >"$WORK/agent.out" 2>&1 &
    AGENT_PID=$!
    bg_track "$AGENT_PID"
    if wait_for bash -c "dbus-send --session --print-reply --dest=org.smimestream.Agent1 /org/smimestream/Agent1 org.smimestream.Agent1.ListSigners >/dev/null 2>&1"; then
        agent_suite agent
    else
        fail "smimestream-agent --session starts and answers ListSigners"
        tail -n 20 "$WORK/agent.out" | diag
    fi
    bg_kill "$AGENT_PID"
else
    skip "dbus:NAME through the real smimestream-agent" "not built ($SMIMESTREAM_AGENT)"
fi

done_testing
