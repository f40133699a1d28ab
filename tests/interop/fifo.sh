#!/bin/bash
# Read-once sources: an attachment that is a FIFO written once by another
# process, and `--attach -` from a pipe.  smimestream must read each source
# exactly once, front to back, and the message must verify with the
# attachment equal to what the writer wrote.
. "$(dirname "$0")/../lib/lib.sh"

signer_args rsa2048

# ---- a FIFO written once (writer ready first) -------------------------------
fifo="$WORK/scan.fifo"
copy="$WORK/scan.copy"
mkfifo "$fifo"
(head -c 3000000 /dev/urandom | tee "$copy" >"$fifo") &
writer=$!
bg_track "$writer"
# The writer blocks opening the FIFO until a reader comes; wait until it is
# there, so this test does not depend on who is scheduled first (see the
# late-writer test below for the other order).
wait_fifo_writer || diag "could not see the writer waiting on the FIFO; going on"
msg="$WORK/fifo.eml"
ok "FIFO attachment (3000000 bytes written once by head|tee): smimestream exits 0" \
    sign_ok "$msg" "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$fifo" --attach-name scan.bin
ok "FIFO: the writer finished without error (its data was read to the end)" \
    eval 'wait "$writer"'
ok "FIFO: openssl cms -verify accepts the message" verify_openssl_cms "$msg"
ok "FIFO: certtool --p7-verify accepts the message" verify_certtool "$msg"
ok "FIFO: gpgsm --verify gives GOODSIG" verify_gpgsm "$msg"
ok "FIFO: the attachment is byte-identical to what the writer wrote" \
    attachment_is "$msg" 2 "$copy" scan.bin

# ---- --attach - from a pipe ----------------------------------------------------
copy2="$WORK/stdin.copy"
msg="$WORK/stdin.eml"
ok "--attach - from a pipe (2000001 bytes): smimestream exits 0" \
    eval 'head -c 2000001 /dev/urandom | tee "$copy2" | sign_ok "$msg" "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach -'
ok "--attach -: openssl cms -verify accepts the message" verify_openssl_cms "$msg"
ok "--attach -: gpgsm --verify gives GOODSIG" verify_gpgsm "$msg"
ok "--attach -: the attachment (default name stdin.bin) equals the piped data" \
    attachment_is "$msg" 2 "$copy2" stdin.bin

# ---- a slow writer with odd write sizes ------------------------------------------
# Reads return whatever the writer wrote: sizes that are not multiples of 3
# exercise the base64 carry between reads.
fifo3="$WORK/slow.fifo"
copy3="$WORK/slow.copy"
mkfifo "$fifo3"
"$PYTHON" - "$fifo3" "$copy3" <<'EOF' &
import os, sys, time
sizes = [1, 2, 1, 57, 58, 56, 4095, 1, 65537, 2, 100000, 3, 7, 131071, 1]
data = os.urandom(sum(sizes))
open(sys.argv[2], "wb").write(data)
with open(sys.argv[1], "wb", buffering=0) as f:
    pos = 0
    for n in sizes:
        f.write(data[pos:pos + n])
        pos += n
        time.sleep(0.02)
EOF
writer3=$!
bg_track "$writer3"
wait_fifo_writer || diag "could not see the writer waiting on the FIFO; going on"
msg="$WORK/slow.eml"
ok "slow FIFO writer with odd write sizes: smimestream exits 0" \
    sign_ok "$msg" "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$fifo3" --attach-name slow.bin
ok "slow FIFO writer: openssl cms accepts, attachment byte-identical" \
    eval 'wait "$writer3" && verify_openssl_cms "$msg" && attachment_is "$msg" 2 "$copy3" slow.bin'

# ---- a FIFO whose writer comes late ---------------------------------------------
# `mkfifo f; scanner >f & smimestream --attach f` must not depend on which
# process runs first.  Here smimestream opens the FIFO before any writer has:
# it must wait for the writer and its data, not take "no writer yet" for the
# end of an empty attachment.
fifo4="$WORK/late.fifo"
copy4="$WORK/late.copy"
mkfifo "$fifo4"
msg="$WORK/late.eml"
(sleep 1; head -c 500000 /dev/urandom | tee "$copy4" >"$fifo4") &
writer4=$!
bg_track "$writer4"
ok "FIFO whose writer opens it 1 s after smimestream started: smimestream exits 0" \
    sign_ok "$msg" "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$fifo4" --attach-name late.bin
late_check() {
    verify_openssl_cms "$msg" && parts_of "$msg" || return 1
    local got
    got=$(stat -c %s "$msg.d/parts/2.bin") || return 1
    [ "$got" -eq 500000 ] ||
        say "the signed attachment has $got bytes; the writer's 500000 bytes were not read" ||
        return 1
    same_file "$copy4" "$msg.d/parts/2.bin"
}
ok "late FIFO writer: the attachment holds the writer's 500000 bytes (not an empty file)" \
    late_check
# If smimestream did not read, the writer is still blocked opening the FIFO.
bg_kill "$writer4"

# ---- three read-once sources in one message ----------------------------------------
fifo5="$WORK/a.fifo"
copy5="$WORK/a.copy"
reg="$WORK/b.dat"
copy6="$WORK/c.copy"
mkfifo "$fifo5"
random_file "$reg" 70001
(head -c 123457 /dev/urandom | tee "$copy5" >"$fifo5") &
bg_track $!
wait_fifo_writer || diag "could not see the writer waiting on the FIFO; going on"
msg="$WORK/three.eml"
ok "FIFO, regular file and standard input in one message: smimestream exits 0" \
    eval 'head -c 99999 /dev/urandom | tee "$copy6" | sign_ok "$msg" "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$fifo5" --attach-name a.bin --attach "$reg" --attach - --attach-name c.bin'
ok "three sources: openssl cms accepts; each attachment is byte-identical, in order" \
    eval 'verify_openssl_cms "$msg" && attachment_is "$msg" 2 "$copy5" a.bin && attachment_is "$msg" 3 "$reg" b.dat && attachment_is "$msg" 4 "$copy6" c.bin'

done_testing
