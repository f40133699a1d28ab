#!/bin/bash
# Application signers that fail: the application exits instead of signing,
# refuses, is too slow, holds the wrong key, sends bad certificates, is not
# on the bus; dbus:NAME with no agent.  Each time smimestream sign fails with
# a sysexits code and a message naming the application, and -o FILE leaves
# no file behind.
. "$(dirname "$0")/dbuslib.sh"

ATT=$WORK/scan.bin
random_file "$ATT" 500000
MSG_ARGS=("${STD_ARGS[@]}" --attach "$ATT")

# with_env VAR=VALUE CMD...: run CMD (a function is fine) with VAR set.
with_env() {
    (
        export "$1"
        shift
        "$@"
    )
}
# without_bus CMD...: run CMD with no session bus address.
without_bus() {
    (
        unset DBUS_SESSION_BUS_ADDRESS
        export XDG_RUNTIME_DIR=$WORK/none
        "$@"
    )
}

# The application exits when Sign is called, without replying.
if start_app quitter rsa2048 --exit-before-sign; then
    ok "the application exits before signing: sign fails (69/70), no file" \
        expect_sign_fail "$WORK/quitter.eml" '69|70' "left the D-Bus session bus without signing" \
        "${MSG_ARGS[@]}" --signer "dbus:$quitter_BUS$SIGNER_PATH"
    ok "  ... the message names the application" grep_file "$quitter_BUS" "$WORK/quitter.eml.err"
    is "$(sign_calls "$WORK/quitter.log" | wc -l)" 1 "  ... after exactly one Sign call"
    ok "  ... and the application is gone" wait_for bash -c "! kill -0 $quitter_PID 2>/dev/null"
else
    fail "test-app-signer --exit-before-sign starts"
fi

# The same, to standard output: the message is cut off before the
# signature part (the output is not a complete message).
if start_app quitter2 p256 --exit-before-sign; then
    timeout -k 5 60 "$SMIMESTREAM" sign "${MSG_ARGS[@]}" --signer "dbus:$quitter2_BUS$SIGNER_PATH" \
        >"$WORK/quitter2.stdout" 2>"$WORK/quitter2.err"
    rc=$?
    ok "to stdout: sign fails too (69/70, got $rc)" test "$rc" -eq 69 -o "$rc" -eq 70
    ok "to stdout: no signature part was written" bash -c "! grep -q 'application/pkcs7-signature; name=' '$WORK/quitter2.stdout'"
else
    fail "test-app-signer --exit-before-sign starts (stdout)"
fi

# The application answers Sign with a D-Bus error.
if start_app refuser rsa2048 --error org.example.Error.UserDeclined; then
    ok "the application refuses: sign fails (69), no file" \
        expect_sign_fail "$WORK/refuser.eml" 69 "refused to sign \(org.example.Error.UserDeclined\)" \
        "${MSG_ARGS[@]}" --signer "dbus:$refuser_BUS$SIGNER_PATH"
else
    fail "test-app-signer --error starts"
fi

# Too slow: SMIMESTREAM_DBUS_SIGN_TIMEOUT=1, the application takes 4 s.
if start_app slow rsa2048 --delay 4; then
    t0=$(date +%s)
    ok "a slow application times out (SMIMESTREAM_DBUS_SIGN_TIMEOUT=1): 69, no file" \
        with_env SMIMESTREAM_DBUS_SIGN_TIMEOUT=1 expect_sign_fail \
        "$WORK/slow.eml" 69 "did not sign within 1 s" "${MSG_ARGS[@]}" --signer "dbus:$slow_BUS$SIGNER_PATH"
    t1=$(date +%s)
    ok "  ... within a few seconds ($((t1 - t0)) s)" test $((t1 - t0)) -lt 4
else
    fail "test-app-signer --delay starts"
fi

# The application holds another key than its certificate: the library's own
# check of the signature catches it.
if start_bg wrongkey "$TEST_APP_SIGNER" --key "$PKI/other.key" --cert "$PKI/rsa2048-chain.pem" \
    --name wrongkey --log "$WORK/wrongkey.log"; then
    ok "a signature made with the wrong key is caught: fails, no file" \
        expect_sign_fail "$WORK/wrongkey.eml" '65|69|70' "does not verify" \
        "${MSG_ARGS[@]}" --signer "dbus:$wrongkey_BUS$SIGNER_PATH"
else
    fail "test-app-signer starts (wrong key)"
fi

# Bad or missing certificates: refused at open, before any content is read
# (65, EX_DATAERR), and Sign is never called.
if start_app badcerts rsa2048 --bad-certs && start_app nocerts rsa2048 --no-certs; then
    ok "Certificates that are not certificates: 65" \
        expect_sign_fail "$WORK/badcerts.eml" 65 "not a DER X.509 certificate" \
        "${MSG_ARGS[@]}" --signer "dbus:$badcerts_BUS$SIGNER_PATH"
    ok "an empty Certificates property: 65" \
        expect_sign_fail "$WORK/nocerts.eml" 65 "empty Certificates" \
        "${MSG_ARGS[@]}" --signer "dbus:$nocerts_BUS$SIGNER_PATH"
    is "$(cat "$WORK/badcerts.log" "$WORK/nocerts.log" | grep -c '^Sign')" 0 "  ... and Sign was never called"
else
    fail "test-app-signer --bad-certs/--no-certs starts"
fi

# Something on the bus that is no Signer1: the bus itself.
ok "an object without Certificates: 65" \
    expect_sign_fail "$WORK/notsigner.eml" 65 "no usable Certificates property" \
    "${MSG_ARGS[@]}" --signer "dbus:org.freedesktop.DBus/org/freedesktop/DBus"

# Nobody there.
ok "a unique name that is not on the bus: 69" \
    expect_sign_fail "$WORK/gone.eml" 69 "application :1.9999 is not on the D-Bus session bus" \
    "${MSG_ARGS[@]}" --signer "dbus::1.9999$SIGNER_PATH"
ok "a well-known name nobody owns: 69" \
    expect_sign_fail "$WORK/noowner.eml" 69 "no application owns the name org.example.Nobody" \
    "${MSG_ARGS[@]}" --signer "dbus:org.example.Nobody$SIGNER_PATH"
ok "dbus:NAME without an agent: 69, and the message says to start the agent" \
    expect_sign_fail "$WORK/noagent.eml" 69 "unavailable: no smimestream agent \(org.smimestream.Agent1\) on the D-Bus session bus; start smimestream-agent" \
    "${MSG_ARGS[@]}" --signer "dbus:scanner"
ok "a malformed direct form: 64" \
    expect_sign_fail "$WORK/malformed.eml" 64 "is not a D-Bus bus name followed by an object path" \
    "${MSG_ARGS[@]}" --signer "dbus:not a name/x"
ok "dbus: alone: 64" \
    expect_sign_fail "$WORK/empty.eml" 64 "expected dbus:NAME" \
    "${MSG_ARGS[@]}" --signer "dbus:"
ok "no session bus at all: 69 with a clear message" \
    without_bus expect_sign_fail "$WORK/nobus.eml" 69 "no D-Bus session bus" "${MSG_ARGS[@]}" --signer "dbus::1.1$SIGNER_PATH"

done_testing
