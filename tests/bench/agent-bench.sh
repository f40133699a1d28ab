#!/bin/bash
# Benchmark (by hand, not in the suite): a 1 GiB attachment through
# smimestream-agent against `smimestream send` of the same input to the
# same sink (tests/smtp/smtp-sink, which discards data as fast as the socket
# delivers it), side by side in one run; then the agent's peak RSS with 8
# concurrent jobs.
#
#   SIZE=1G JOBS=8 JOB_SIZE=256M tests/bench/agent-bench.sh [BUILD_DIR]
#
# Uses BUILD_DIR (default ./build) unless SMIMESTREAM_AGENT etc. are set
# (see tests/agent/agentlib.sh).  Prints TAP-style diagnostics with the numbers.
bench_build=$(cd "${1:-$(dirname "$0")/../../build}" && pwd)
: "${SMIMESTREAM:=$bench_build/agent/smimestream}"
: "${SMIMESTREAM_AGENT:=$bench_build/agent/smimestream-agent}"
: "${AGENT_CLIENT:=$bench_build/tests/agent/agent-client}"
: "${SMS_PKI_DIR:=$bench_build/tests/pki}"
: "${TEST_TMP:=$bench_build/tests/bench-tmp}"
export SMIMESTREAM SMIMESTREAM_AGENT AGENT_CLIENT SMS_PKI_DIR TEST_TMP
. "$(dirname "$0")/../agent/agentlib.sh"

SIZE=${SIZE:-1G}
JOBS=${JOBS:-8}
JOB_SIZE=${JOB_SIZE:-256M}
SINK=${SMTP_SINK:-$(dirname "$AGENT_CLIENT")/../smtp/smtp-sink}
[ -x "$SINK" ] || bail_out "no smtp-sink at $SINK"
# The agent finds signer plugins the way the suite does.
: "${SMIMESTREAM_PLUGIN_DIR:=$(dirname "$SMIMESTREAM_AGENT")/../plugins/software}"
export SMIMESTREAM_PLUGIN_DIR

start_bus
"$SINK" "$WORK/sink.port" "$WORK/sink.log" >"$WORK/sink.out" 2>&1 &
bg_track $!
wait_for test -s "$WORK/sink.port" || bail_out "smtp-sink did not start"
SMTP_URL="smtp://127.0.0.1:$(cat "$WORK/sink.port")"
write_config "max-running-jobs = $JOBS" "max-jobs-per-sender = $JOBS"
start_agent

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# Direct: smimestream send, reading the same generated stream from a pipe.
T0=$(date +%s.%N)
"$AGENT_CLIENT" gen "$SIZE" 1 | "$SMIMESTREAM" send "${MSG_ARGS[@]}" --attach - --attach-name scan.bin \
    --signer "$PKI/rsa2048.key" --cert "$PKI/rsa2048-chain.pem" --smtp "$SMTP_URL" 2>"$WORK/direct.err"
RC=$?
T1=$(date +%s.%N)
is "$RC" 0 "smimestream send of $SIZE"
DIRECT=$(secs "$T0" "$T1")

# Through the agent: the client's writer process generates the same stream.
T0=$(date +%s.%N)
client "$WORK/agent.out" submit "${MSG_ARGS[@]}" --pipe "$SIZE:1" --name scan.bin --timeout 600
T1=$(date +%s.%N)
is "$(state_of "$WORK/agent.out" "$(job_of "$WORK/agent.out")")" done "the agent's job of $SIZE"
AGENT=$(secs "$T0" "$T1")
diag "$SIZE: smimestream send $DIRECT s, through the agent $AGENT s," \
    "agent/direct throughput ratio $(awk -v d="$DIRECT" -v a="$AGENT" 'BEGIN { printf "%.3f", d / a }')"

# Peak RSS with JOBS concurrent jobs.
client "$WORK/many.out" submit "${MSG_ARGS[@]}" --pipe "$JOB_SIZE:2" --count "$JOBS" --timeout 600
is "$(awk '$1 == "finished" && $3 == "done"' "$WORK/many.out" | wc -l)" "$JOBS" "$JOBS concurrent jobs of $JOB_SIZE"
diag "agent peak RSS (VmHWM) after $JOBS concurrent jobs: $(awk '/^VmHWM:/ { print $2 / 1024 " MiB" }' "/proc/$AGENT_PID/status")"
stop_agent
done_testing
