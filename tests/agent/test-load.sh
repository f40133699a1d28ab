#!/bin/bash
# 8 jobs submitted at once, 64 MiB each from pipes: every message verifies
# and carries its own data, the agent's open fds come back to where they
# started, and its memory stays bounded (the peak RSS is reported).
. "$(dirname "$0")/agentlib.sh"

start_bus
start_smtpd
write_config "max-running-jobs = 8" "max-jobs-per-sender = 8"
start_agent
FD0=$(fd_count "$AGENT_PID")
RSS0=$(awk '/^VmRSS:/ { print $2 }' "/proc/$AGENT_PID/status")

O=$WORK/load.out
T0=$(date +%s.%N)
client "$O" submit "${MSG_ARGS[@]}" --pipe 64M:100 --name scan.bin --count 8 --timeout 280
T1=$(date +%s.%N)
HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$AGENT_PID/status")
diag "8 x 64 MiB through the agent in $(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }') s;" \
    "agent RSS at start $((RSS0 / 1024)) MiB, peak (VmHWM) $((HWM / 1024)) MiB"
is "$(jobs_of "$O" | wc -l)" 8 "8 jobs accepted"
is "$(awk '$1 == "finished" && $3 == "done"' "$O" | wc -l)" 8 "all 8 finished: done"

i=0
for J in $(jobs_of "$O"); do
    M=$(stored_by_msgid "$(msgid_of "$O" "$J")")
    if [ -z "$M" ]; then
        fail "job $i: its message was stored"
    else
        ok "job $i: openssl cms -verify accepts its message" verify_openssl_cms "$M"
        is "$(attachment_hash "$M" 2)" "$(gen_hash 64M $((100 + i)))" "job $i: the attachment is its own 64 MiB"
        rm -rf "$M.d"
    fi
    i=$((i + 1))
done

# Each job's fds (attachment, eventfds, SMTP socket) are gone.
is "$(fd_count "$AGENT_PID")" "$FD0" "the agent's open fds are back to where they started ($FD0)"
ok "peak RSS with 8 concurrent 64 MiB jobs stays under 128 MiB ($((HWM / 1024)) MiB)" \
    test "$HWM" -lt $((128 * 1024))
ok "the agent stops on SIGTERM" stop_agent
done_testing
