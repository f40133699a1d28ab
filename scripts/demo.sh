#!/bin/bash
# scripts/demo.sh: on a fresh Debian machine, build smimestream, make a
# throw-away CA and signer, and sign a message whose 256 MiB attachment is
# streamed from a pipe (a stand-in for a scanner).  Shows the throughput and
# checks the result with `openssl cms -verify`.
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

work=$(mktemp -d /tmp/smimestream-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "== making a throw-away CA and signer in $work"
tests/lib/mkpki.sh "$work/pki"

echo "== signing a message with a ${mib} MiB attachment streamed from a pipe"
# The "scanner": a pipe that can be read only once.  tee keeps a copy and a
# checksum so that we can compare what the recipient gets.
start=$(date +%s.%N)
head -c $((mib * 1024 * 1024)) /dev/urandom | tee >(sha256sum > "$work/sent.sha256") | \
    build/agent/smimestream sign \
        --from "Scanner <scanner@example.org>" --to alice@example.org \
        --subject "Scan $(date +%F)" --body "The scan you asked for is attached." \
        --attach - --attach-name scan.pnm --attach-type image/x-portable-anymap \
        --signer "$work/pki/p256.key" --cert "$work/pki/p256-chain.pem" \
        --progress -o "$work/message.eml"
end=$(date +%s.%N)
size=$(stat -c %s "$work/message.eml")
python3 - "$start" "$end" "$mib" "$size" <<'PY'
import sys
t = float(sys.argv[2]) - float(sys.argv[1])
mib, size = int(sys.argv[3]), int(sys.argv[4])
print(f"   {mib} MiB attachment -> {size / 2**20:.1f} MiB message in {t:.2f} s "
      f"({mib / t:.0f} MiB/s of attachment, end to end including the random source)")
PY

echo "== verifying with openssl cms -verify"
openssl cms -verify -in "$work/message.eml" -CAfile "$work/pki/ca.pem" \
    -out "$work/entity.mime" 2>&1 | sed 's/^/   /'
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
    echo "   the attachment the recipient gets is byte-identical to what the scanner sent"
    echo "   sha256 $sent"
else
    echo "   MISMATCH: sent $sent, received $got" >&2
    exit 1
fi
echo "== done"
