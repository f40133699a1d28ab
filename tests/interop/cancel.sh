#!/bin/bash
# Cancel and abort (smimestream(1), SIGNALS).
#  - One SIGINT while an attachment is being read: the message is completed
#    as a signed PARTIAL message that says which attachment is cut and how
#    many bytes of it were sent; exit 0.
#  - A second SIGINT (or SIGTERM): abort, exit 75, and with -o no file left.
# The attachment is a FIFO whose writer writes 1 MiB and then keeps the FIFO
# open without writing, so smimestream is waiting on a quiet pipe.
. "$(dirname "$0")/../lib/lib.sh"

signer_args rsa2048
WRITE_BYTES=1048576

# start_writer FIFO COPY MARK: write WRITE_BYTES random bytes into FIFO (and
# into COPY), touch MARK, then keep the FIFO open for up to 60 s.
start_writer() {
    "$PYTHON" - "$1" "$2" "$3" "$WRITE_BYTES" <<'EOF' &
import os, sys, time
fifo, copy, mark, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
data = os.urandom(n)
open(copy, "wb").write(data)
fd = os.open(fifo, os.O_WRONLY)
view = memoryview(data)
while view:
    view = view[os.write(fd, view):]
open(mark, "w").close()
time.sleep(60)
EOF
    WRITER=$!
    bg_track "$WRITER"
}

# all_consumed FIFO MARK: the writer is done and the FIFO is empty, i.e.
# smimestream has read every byte written so far.
all_consumed() {
    [ -e "$2" ] && [ "$("$PYTHON" "$MIMETOOL" fionread "$1")" = 0 ]
}

# run_until_consumed NAME OUT ARGS...: start smimestream on a new FIFO with a
# writer, -o OUT, and wait until it has read all that was written.  Sets PID,
# WRITER, FIFO, COPY.
run_until_consumed() {
    local name=$1 out=$2
    shift 2
    FIFO="$WORK/$name.fifo"
    COPY="$WORK/$name.copy"
    local mark="$WORK/$name.written"
    mkfifo "$FIFO"
    start_writer "$FIFO" "$COPY" "$mark"
    wait_fifo_writer || diag "could not see the writer waiting on the FIFO; going on"
    "$SMIMESTREAM" sign -o "$out" "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" \
        --attach "$FIFO" --attach-name scan.raw "$@" 2>"$out.err" &
    PID=$!
    bg_track "$PID"
    wait_for all_consumed "$FIFO" "$mark" || { diag "smimestream did not read the data"; return 1; }
    # Give it a moment to be back in read() on the quiet pipe.
    sleep 0.2
}

# no_output_left OUT: neither OUT nor OUT.partial-* exists.
no_output_left() {
    [ ! -e "$1" ] || say "$1 exists" || return 1
    local left
    left=$(ls "$1".partial-* 2>/dev/null)
    [ -z "$left" ] || say "temporary file left behind: $left"
}

# ---- one SIGINT: cancel -------------------------------------------------------
other="$WORK/later.dat"
random_file "$other" 1000
msg="$WORK/cancel.eml"
if run_until_consumed cancel "$msg" --attach "$other"; then
    kill -INT "$PID"
    wait_exit "$PID" 30
    rc=$?
else
    rc=-1
fi
bg_kill "$WRITER"
ok "cancel: one SIGINT while waiting on the FIFO gives exit 0 and a note about a PARTIAL message" \
    eval '[ "$rc" -eq 0 ] || say "exit code $rc"; cat "$msg.err" >&2; [ "$rc" -eq 0 ] && grep_file "PARTIAL" "$msg.err"'
ok "cancel: openssl cms -verify accepts the partial message" verify_openssl_cms "$msg"
ok "cancel: gpgsm --verify gives GOODSIG" verify_gpgsm "$msg"
ok "cancel: certtool --p7-verify accepts it" verify_certtool "$msg"

# notice_ok MSG: part 3 is the PARTIAL-MESSAGE.txt notice and names the
# attachment, the bytes sent, and the attachment that was not sent; NSENT is
# the number of bytes it says were sent.
NSENT=
notice_ok() {
    parts_of "$1" || return 1
    local p="$1.d/parts"
    [ "$(cat "$p/count")" -eq 3 ] || say "expected 3 parts (body, cut attachment, notice), got $(cat "$p/count")" || return 1
    [ "$(cat "$p/3.name" 2>/dev/null)" = PARTIAL-MESSAGE.txt ] || say "part 3 is not PARTIAL-MESSAGE.txt" || return 1
    [ "$(cat "$p/3.type")" = text/plain ] || say "the notice is $(cat "$p/3.type"), not text/plain" || return 1
    local n="$p/3.bin"
    cat "$n" >&2
    grep_file 'PARTIAL' "$n" && grep_file '"scan\.raw"' "$n" &&
        grep_file '"later\.dat".*not sent' "$n" || return 1
    NSENT=$(grep -o '"scan\.raw"[^0-9]*[0-9]\+ bytes' "$n" | grep -o '[0-9]\+ bytes' | cut -d' ' -f1)
    [ -n "$NSENT" ] || say "the notice does not say how many bytes of scan.raw were sent"
}
ok "cancel: the message ends with a PARTIAL-MESSAGE.txt notice naming scan.raw, the bytes sent, and later.dat as not sent" \
    notice_ok "$msg"
is "${NSENT:-none}" "$WRITE_BYTES" "cancel: the notice says $WRITE_BYTES bytes (all that was written before the cancel) were sent"

# prefix_ok MSG COPY N: the partial attachment is the first N bytes written.
prefix_ok() {
    [ -n "$3" ] || say "no byte count" || return 1
    head -c "$3" "$2" >"$1.d/expected-prefix"
    same_file "$1.d/expected-prefix" "$1.d/parts/2.bin"
}
ok "cancel: the partial attachment equals the first (bytes sent) bytes the writer wrote" \
    prefix_ok "$msg" "$COPY" "$NSENT"

# ---- a second SIGINT: abort ------------------------------------------------------
# Completing a partial message takes about a millisecond, so a second SIGINT
# sent "soon after" the first one usually comes too late.  mimetool makes the
# two arrive back to back (one in the thread's pending set, one in the
# process's; see sigint-twice there), so the result does not depend on timing.
msg="$WORK/abort.eml"
rc=-1
if run_until_consumed abort "$msg"; then
    "$PYTHON" "$MIMETOOL" sigint-twice "$PID"
    wait_exit "$PID" 30
    rc=$?
fi
bg_kill "$WRITER"
ok "abort: a second SIGINT gives exit 75 and an 'aborted' message" \
    eval 'cat "$msg.err" >&2; [ "$rc" -eq 75 ] || say "exit code $rc, expected 75"; [ "$rc" -eq 75 ] && grep_file "abort" "$msg.err"'
ok "abort: with -o FILE no file is left (neither FILE nor FILE.partial-*)" no_output_left "$msg"

# ---- SIGTERM: abort --------------------------------------------------------------
msg="$WORK/term.eml"
rc=-1
if run_until_consumed term "$msg"; then
    kill -TERM "$PID"
    wait_exit "$PID" 30
    rc=$?
fi
bg_kill "$WRITER"
ok "SIGTERM while reading: exit 75" \
    eval 'cat "$msg.err" >&2; [ "$rc" -eq 75 ] || say "exit code $rc, expected 75"'
ok "SIGTERM: with -o FILE no file is left" no_output_left "$msg"

done_testing
