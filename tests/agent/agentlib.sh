# Helpers for the smimestream-agent tests (bash, TAP).  Sourced by each
# test-*.sh; builds on tests/lib/lib.sh (TAP, PKI, verifiers).
#
# Each script gets its own private bus (dbus-daemon with bus.conf: any
# local user may connect, nothing is activated), its own aiosmtpd
# (tests/smtp/smtpd.py) storing into $WORK/store, and its own agent.
#
# Environment (set by tests/agent/meson.build):
#   SMIMESTREAM_AGENT  the daemon     AGENT_CLIENT  the test client
#   SMIMESTREAM, SMIMESTREAM_PLUGIN_DIR, SMS_PKI_DIR, TEST_TMP (see lib.sh)

. "$(dirname "$0")/../lib/lib.sh"

AGENT_SRC=$SRC_DIR/tests/agent
: "${SMIMESTREAM_AGENT:=$SRC_DIR/build-agent/agent/smimestream-agent}"
: "${AGENT_CLIENT:=$SRC_DIR/build-agent/tests/agent/agent-client}"
[ -x "$SMIMESTREAM_AGENT" ] || bail_out "no smimestream-agent at $SMIMESTREAM_AGENT"
[ -x "$AGENT_CLIENT" ] || bail_out "no agent-client at $AGENT_CLIENT"
command -v dbus-daemon >/dev/null || { echo "1..0 # SKIP dbus-daemon is not installed"; exit 0; }
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null ||
    { echo "1..0 # SKIP python3-aiosmtpd is not installed"; exit 0; }

STORE=$WORK/store
AGENT_PID=
MSG_ARGS=(--from 'Scanner <scanner@example.org>' --to office@example.org
          --subject 'Scanned document' --body 'The scanned document is attached.')

# start_bus: a private bus; exports DBUS_SESSION_BUS_ADDRESS.
start_bus() {
    local out
    out=$(dbus-daemon --config-file="$AGENT_SRC/bus.conf" --fork --print-address=1 \
        --print-pid=1 2>"$WORK/dbus-daemon.err") || bail_out "dbus-daemon did not start"
    DBUS_SESSION_BUS_ADDRESS=$(sed -n 1p <<<"$out")
    BUS_PID=$(sed -n 2p <<<"$out")
    export DBUS_SESSION_BUS_ADDRESS
    bg_track "$BUS_PID"
    unset DBUS_SYSTEM_BUS_ADDRESS
}

# start_smtpd: aiosmtpd on a free port; SMTP_URL says where.
start_smtpd() {
    mkdir -p "$STORE"
    /usr/bin/python3 "$SRC_DIR/tests/smtp/smtpd.py" --port-file "$WORK/smtp.port" \
        --store "$STORE" --log "$WORK/smtpd.log" --control "$WORK/smtpd.ctl" \
        >"$WORK/smtpd.out" 2>&1 &
    SMTPD_PID=$!
    bg_track "$SMTPD_PID"
    wait_for test -s "$WORK/smtp.port" || bail_out "smtpd.py did not start: $(cat "$WORK/smtpd.out")"
    SMTP_URL="smtp://127.0.0.1:$(cat "$WORK/smtp.port")"
}

# write_config [LINES...]: $WORK/agent.conf with an [smtp:default] for our
# server and a [signer:default] (the rsa2048 test key), then LINES (which
# may open further groups; [agent] lines go first, so give them first).
write_config() {
    {
        echo "[agent]"
        echo "sender-check-delay-ms = 100"
        local l
        for l in "$@"; do echo "$l"; done
        echo
        echo "[smtp:default]"
        echo "url = $SMTP_URL"
        echo "timeout = 60"
        echo
        echo "[signer:default]"
        echo "spec = $PKI/rsa2048.key"
        echo "cert = $PKI/rsa2048-chain.pem"
        echo
        echo "[signer:p256]"
        echo "spec = $PKI/p256.key"
        echo "cert = $PKI/p256-chain.pem"
    } >"$WORK/agent.conf"
}

# start_agent [ARGS...]: smimestream-agent --session --config agent.conf;
# waits until it owns its name.
start_agent() {
    "$SMIMESTREAM_AGENT" --session --config "$WORK/agent.conf" "$@" >>"$WORK/agent.log" 2>&1 &
    AGENT_PID=$!
    bg_track "$AGENT_PID"
    wait_for "$AGENT_CLIENT" list-signers >/dev/null 2>&1 ||
        { cat "$WORK/agent.log" >&2; bail_out "smimestream-agent did not start"; }
}

# stop_agent: SIGTERM; succeeds when the agent exits 0 and its log holds
# no sanitizer report (ASan/UBSan/LSan builds).
stop_agent() {
    [ -n "$AGENT_PID" ] || return 0
    kill -TERM "$AGENT_PID" 2>/dev/null
    wait_exit "$AGENT_PID" 20
    local rc=$?
    AGENT_PID=
    if grep -Eq 'Sanitizer|runtime error:' "$WORK/agent.log"; then
        grep -E -A20 'Sanitizer|runtime error:' "$WORK/agent.log" | head -n 60 >&2
        return 1
    fi
    [ $rc -eq 0 ] || { echo "smimestream-agent exited with $rc" >&2; tail -n 20 "$WORK/agent.log" >&2; }
    return $rc
}

# client OUT ARGS...: run agent-client ARGS (stdout in OUT, stderr in OUT.err).
client() {
    local out=$1
    shift
    timeout -k 5 300 "$AGENT_CLIENT" "$@" >"$out" 2>"$out.err"
}

# Fields of the client's output.
job_of() { awk '$1 == "job" { print $2; exit }' "$1"; }
jobs_of() { awk '$1 == "job" { print $2 }' "$1"; }
state_of() { awk -v j="$2" '$1 == "finished" && $2 == j { print $3 }' "$1"; }
msgid_of() { awk -v j="$2" '$1 == "finished" && $2 == j { print $4 }' "$1"; }
summary_of() { # summary_of OUT JOB KEY
    awk -v j="$2" -v k="$3" '$1 == "summary" && $2 == j {
        for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }' "$1"
}
error_of() { awk '$1 == "error" { sub(/:$/, "", $2); print $2; exit }' "$1"; }

# prop JOB NAME: a property of a job (empty when the call fails).
prop() {
    "$AGENT_CLIENT" props "$1" 2>/dev/null | sed -n "s/^$2=//p"
}

stored_count() {
    find "$STORE" -name '*.eml' 2>/dev/null | wc -l
}

# stored_by_msgid ID: the stored message with that Message-ID.
stored_by_msgid() {
    grep -l -F -- "<$1>" "$STORE"/*.eml 2>/dev/null | head -n 1
}

fd_count() {
    ls "/proc/$1/fd" 2>/dev/null | wc -l
}

# attachment_hash MSG N: sha256 of part N of the verified content.
attachment_hash() {
    parts_of "$1" >/dev/null 2>&1 || return 1
    sha256sum <"$1.d/parts/$2.bin" | cut -d' ' -f1
}

gen_hash() { # gen_hash BYTES SEED
    "$AGENT_CLIENT" gen "$1" "$2" | sha256sum | cut -d' ' -f1
}

# A file-backed check helper: has_line FILE REGEX
has_line() {
    grep -Eq -- "$2" "$1" || { echo "no line /$2/ in $1:" >&2; head -c 3000 "$1" >&2; return 1; }
}
