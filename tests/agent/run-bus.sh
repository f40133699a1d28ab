#!/bin/bash
# run-bus.sh PROGRAM ARGS...: run PROGRAM on a private bus (bus.conf), then
# stop the bus.
set -u
conf="$(dirname "$0")/bus.conf"
out=$(dbus-daemon --config-file="$conf" --fork --print-address=1 --print-pid=1 2>/dev/null) ||
    { echo "Bail out! dbus-daemon did not start"; exit 99; }
export DBUS_SESSION_BUS_ADDRESS=$(sed -n 1p <<<"$out")
pid=$(sed -n 2p <<<"$out")
"$@"
rc=$?
kill "$pid" 2>/dev/null
exit $rc
