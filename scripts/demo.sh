#!/bin/bash
# scripts/demo.sh: on a fresh Debian machine, build smimestream, make a
# throw-away CA and put the signer's key on a throw-away SoftHSM2 token (the
# kiosk with a smart card), start a loopback SMTP server that stores what it
# receives, and send a signed message whose 256 MiB attachment is streamed
# from a pipe (a stand-in for a scanner).  Then check the stored copy with
# `openssl cms -verify` and compare the attachment with what was sent.
#
#   DEMO_MIB=1024 scripts/demo.sh     # a bigger scan
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. scripts/deps.sh
sms_install_deps

mib=${DEMO_MIB:-256}
echo "== building"
[ -d build ] || meson setup build >/dev/null
meson compile -C build >/dev/null
sms=$top/build/agent/smimestream

work=$(mktemp -d /tmp/smimestream-demo.XXXXXX)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "== making a throw-away CA and signer"
tests/lib/mkpki.sh "$work/pki" >/dev/null

echo "== putting the signer's key and certificate on a throw-away SoftHSM2 token"
mkdir -p "$work/softhsm/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
    "$work/softhsm/tokens" > "$work/softhsm/softhsm2.conf"
export SOFTHSM2_CONF=$work/softhsm/softhsm2.conf
softhsm2-util --init-token --free --label kiosk --so-pin 12345678 --pin 4711 >/dev/null
for what in "--load-privkey $work/pki/p256.key" "--load-certificate $work/pki/p256.pem"; do
    # shellcheck disable=SC2086
    GNUTLS_PIN=4711 p11tool --provider /usr/lib/softhsm/libsofthsm2.so --login --write \
        $what --label scanner --id 01 "pkcs11:token=kiosk" >/dev/null
done
printf '4711\n' > "$work/pin"; chmod 600 "$work/pin"
uri="pkcs11:token=kiosk;object=scanner;type=private"
echo "   signer: $uri"

echo "== starting a loopback SMTP server that stores what it receives"
mkdir -p "$work/store"
/usr/bin/python3 tests/smtp/smtpd.py --port-file "$work/port" --store "$work/store" \
    > "$work/smtpd.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")
echo "   smtp://127.0.0.1:$port"

echo "== sending a signed message with a ${mib} MiB attachment streamed from a pipe"
# The "scanner": a pipe that can be read only once.  tee feeds a checksum
# of what was sent (through a FIFO we can wait for) to compare with what
# arrived.
mkfifo "$work/sent.fifo"
sha256sum < "$work/sent.fifo" > "$work/sent.sha256" &
sum_pid=$!
start=$(date +%s.%N)
head -c $((mib * 1024 * 1024)) /dev/urandom | tee "$work/sent.fifo" | \
    "$sms" send --smtp "smtp://127.0.0.1:$port" \
        --from "Scanner <scanner@example.org>" --to alice@example.org \
        --subject "Scan $(date +%F)" --body "The scan you asked for is attached." \
        --attach - --attach-name scan.pnm --attach-type image/x-portable-anymap \
        --signer "$uri" --cert "$work/pki/p256-chain.pem" --pin-file "$work/pin" --progress
end=$(date +%s.%N)
wait "$sum_pid"
stored=$(ls "$work"/store/*.eml)
python3 - "$start" "$end" "$mib" "$(stat -c %s "$stored")" <<'PY'
import sys
t = float(sys.argv[2]) - float(sys.argv[1])
mib, size = int(sys.argv[3]), int(sys.argv[4])
print(f"   {mib} MiB attachment -> {size / 2**20:.1f} MiB message stored by the server in {t:.2f} s "
      f"({mib / t:.0f} MiB/s end to end)")
print("   (the demo's server is Python's aiosmtpd writing to disk, and it sets the pace here;"
      " tests/bench/ measures smimestream against a fast sink)")
PY

echo "== verifying the stored copy with openssl cms -verify"
openssl cms -verify -in "$stored" -CAfile "$work/pki/ca.pem" -out "$work/entity.mime" 2>&1 | \
    sed 's/^/   /'
python3 - "$work/entity.mime" "$work/received.bin" <<'PY'
import email, email.policy, sys
msg = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=email.policy.default)
for part in msg.iter_attachments():
    open(sys.argv[2], "wb").write(part.get_payload(decode=True))
    print(f"   attachment {part.get_filename()!r}: {part.get_content_type()}")
PY
sent=$(cut -d' ' -f1 "$work/sent.sha256")
got=$(sha256sum "$work/received.bin" | cut -d' ' -f1)
if [ "$sent" = "$got" ]; then
    echo "   the attachment that arrived is byte-identical to what the scanner sent"
    echo "   sha256 $sent"
else
    echo "   MISMATCH: sent $sent, received $got" >&2
    exit 1
fi
echo "== done"
