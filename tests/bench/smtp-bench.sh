#!/bin/bash
# Benchmark: sending a signed message with a big attachment from a pipe
# through sms_smtp_send() into a fast loopback sink, compared in one run with
#   - curl -T of a pre-built message of the same size into the same sink
#     (the ceiling: libcurl's SMTP upload with nothing to compute), and
#   - smimestream sign -o /dev/null of the same attachment from a pipe
#     (the ceiling of producing the message: MIME, base64, digest, signature).
# Also reports the time from start to the first byte at the server for a
# 1 MiB and the big attachment.  Not a test: numbers depend on the machine.
#
# On loopback nothing waits for the network, so the sender's CPU is the
# limit: producing the message (base64, SHA-256) and libcurl's upload (its
# byte-by-byte dot-stuffing scan, the send() copies) run one after the other
# in one thread.  A second round therefore uses a sink that reads at a
# network-like rate (BENCH_LINK_MBIT, default 1000 Mbit/s) with a smaller
# attachment (BENCH_LINK_MIB, default 256): there both senders should be
# limited by the link alone.
#
#   tests/bench/smtp-bench.sh [BUILD_DIR]    (BENCH_MIB=1024, BENCH_RUNS=3)
#
# The sender is tests/smtp/smtp-send (a small driver of the library); when
# `smimestream send` exists it is measured too.  The sink is
# tests/smtp/smtp-sink (Postfix's smtp-sink reads line by line and would be
# the bottleneck).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build}
mib=${BENCH_MIB:-1024}
runs=${BENCH_RUNS:-3}
link_mbit=${BENCH_LINK_MBIT:-1000}
link_mib=${BENCH_LINK_MIB:-256}
sms=$build/agent/smimestream
send=$build/tests/smtp/smtp-send
sink=$build/tests/smtp/smtp-sink
for f in "$sms" "$send" "$sink"; do
    [ -x "$f" ] || { echo "missing $f: build first (ninja -C $build)" >&2; exit 1; }
done
command -v curl >/dev/null || { echo "curl(1) is needed" >&2; exit 1; }
export SMIMESTREAM_PLUGIN_DIR=$build/plugins/software OPENSSL_CONF=/dev/null
work=$(mktemp -d /tmp/sms-smtp-bench.XXXXXX)
sink_pid= slow_pid=
cleanup() {
    set +e
    for p in $sink_pid $slow_pid; do
        kill "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT
"$top/tests/lib/mkpki.sh" "$work/pki"
key=$work/pki/rsa2048.key cert=$work/pki/rsa2048-chain.pem

"$sink" "$work/port" "$work/sink.log" &
sink_pid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.05; done
url=smtp://127.0.0.1:$(cat "$work/port")
"$sink" "$work/slow-port" "$work/slow.log" "$(echo "scale=3; $link_mbit / 8" | bc -l)" &
slow_pid=$!
for _ in $(seq 100); do [ -s "$work/slow-port" ] && break; sleep 0.05; done
slow_url=smtp://127.0.0.1:$(cat "$work/slow-port")

head -c $((mib * 1024 * 1024)) /dev/urandom >"$work/big.bin"
head -c $((1024 * 1024)) /dev/urandom >"$work/1m.bin"
head -c $((link_mib * 1024 * 1024)) "$work/big.bin" >"$work/link.bin"
cat "$work/big.bin" >/dev/null # page cache, for every contender alike

has_send=0
"$sms" send --help >/dev/null 2>&1 && has_send=1

now_ns() { date +%s%N; }
secs() { echo "scale=6; ($2 - $1) / 1000000000" | bc -l; } # secs T0_NS T1_NS
last_sink() { tail -n 1 "$work/sink.log"; }
field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p"; }

# smtp-send from a pipe -> "seconds ttfb_seconds wire_bytes"
run_send() {
    local file=$1 to=${2:-$url} t0 t1 line
    t0=$(now_ns)
    cat "$file" | "$send" --url "$to" --from a@example.org --to b@example.org \
        --key "$key" --cert "$cert" --attach - 2>"$work/send.err" ||
        { cat "$work/send.err" >&2; exit 1; }
    t1=$(now_ns)
    line=$(last_sink)
    [ "$to" = "$url" ] || line=$(tail -n 1 "$work/slow.log")
    echo "$(secs "$t0" "$t1") $(secs "$t0" "$(field first_byte_ns <<<"$line")") $(field bytes <<<"$line")"
}

# smimestream send from a pipe (when the CLI has it)
run_cli_send() {
    local file=$1 t0 t1 line
    t0=$(now_ns)
    cat "$file" | "$sms" send --smtp "$url" --from a@example.org --to b@example.org \
        --subject bench --signer "$key" --cert "$cert" --attach - 2>"$work/cli.err" ||
        { cat "$work/cli.err" >&2; exit 1; }
    t1=$(now_ns)
    line=$(last_sink)
    echo "$(secs "$t0" "$t1") $(secs "$t0" "$(field first_byte_ns <<<"$line")") $(field bytes <<<"$line")"
}

# smimestream sign -o /dev/null from a pipe
run_sign() {
    local t0 t1
    t0=$(now_ns)
    cat "$1" | "$sms" sign --from a@example.org --to b@example.org --subject bench \
        --signer "$key" --cert "$cert" --attach - -o /dev/null
    t1=$(now_ns)
    secs "$t0" "$t1"
}

# curl -T of a pre-built message of the same size
run_curl() {
    local msg=${1:-$work/msg.eml} to=${2:-$url} t0 t1
    t0=$(now_ns)
    curl -sS --url "$to" --mail-from a@example.org --mail-rcpt b@example.org -T "$msg"
    t1=$(now_ns)
    secs "$t0" "$t1"
}

# The pre-built message: what smtp-send sends, signed to a file.
cat "$work/big.bin" | "$sms" sign --from a@example.org --to b@example.org --subject bench \
    --signer "$key" --cert "$cert" --attach - -o "$work/msg.eml"
cat "$work/msg.eml" >/dev/null
msg_bytes=$(stat -c %s "$work/msg.eml")
cat "$work/link.bin" | "$sms" sign --from a@example.org --to b@example.org --subject bench \
    --signer "$key" --cert "$cert" --attach - -o "$work/link.eml"
link_bytes=$(stat -c %s "$work/link.eml")

min() { echo "if ($1 < $2) $1 else $2" | bc -l; }
echo "attachment: $mib MiB from a pipe; message on the wire ~$((msg_bytes / 1048576)) MiB;" \
     "$runs runs each, alternating; best time counts"
best_send=999999 best_curl=999999 best_sign=999999 best_cli=999999 ttfb_big=999999 ttfb_cli=999999
for i in $(seq "$runs"); do
    read -r t ttfb wire < <(run_send "$work/big.bin")
    echo "  sms_smtp_send  run $i: ${t}s  first byte at the server after ${ttfb}s  ($wire bytes)"
    best_send=$(min "$t" "$best_send"); ttfb_big=$(min "$ttfb" "$ttfb_big")
    t=$(run_curl)
    echo "  curl -T        run $i: ${t}s"
    best_curl=$(min "$t" "$best_curl")
    t=$(run_sign "$work/big.bin")
    echo "  sign >/dev/null run $i: ${t}s"
    best_sign=$(min "$t" "$best_sign")
    if [ $has_send = 1 ]; then
        read -r t ttfb wire < <(run_cli_send "$work/big.bin")
        echo "  smimestream send run $i: ${t}s  first byte after ${ttfb}s"
        best_cli=$(min "$t" "$best_cli"); ttfb_cli=$(min "$ttfb" "$ttfb_cli")
    fi
done
ttfb_1m=999999
for i in $(seq "$runs"); do
    read -r _ ttfb _ < <(run_send "$work/1m.bin")
    ttfb_1m=$(min "$ttfb" "$ttfb_1m")
done
echo "through a sink reading at $link_mbit Mbit/s, $link_mib MiB attachment:"
link_send=999999 link_curl=999999
for i in $(seq "$runs"); do
    read -r t _ _ < <(run_send "$work/link.bin" "$slow_url")
    echo "  sms_smtp_send  run $i: ${t}s"
    link_send=$(min "$t" "$link_send")
    t=$(run_curl "$work/link.eml" "$slow_url")
    echo "  curl -T        run $i: ${t}s"
    link_curl=$(min "$t" "$link_curl")
done

rate() { echo "scale=1; $1 / 1000000 / $2" | bc -l; }
ms() { echo "scale=1; $1 * 1000 / 1" | bc -l; }
att=$((mib * 1024 * 1024))
echo
echo "sms_smtp_send:      $(rate "$msg_bytes" "$best_send") MB/s on the wire ($(rate "$att" "$best_send") MB/s of attachment)"
echo "curl -T (prebuilt): $(rate "$msg_bytes" "$best_curl") MB/s on the wire"
echo "sign to /dev/null:  $(rate "$att" "$best_sign") MB/s of attachment"
[ $has_send = 1 ] && echo "smimestream send:   $(rate "$msg_bytes" "$best_cli") MB/s on the wire"
echo "ratio sms_smtp_send / curl -T:          $(echo "scale=3; $best_curl / $best_send" | bc -l)"
echo "ratio sms_smtp_send / sign to /dev/null: $(echo "scale=3; $best_sign / $best_send" | bc -l)"
echo "first byte at the server (from process start): $(ms "$ttfb_1m") ms (1 MiB), $(ms "$ttfb_big") ms ($mib MiB)"
echo "at $link_mbit Mbit/s: sms_smtp_send $(rate "$link_bytes" "$link_send") MB/s, curl -T $(rate "$link_bytes" "$link_curl") MB/s, ratio $(echo "scale=3; $link_curl / $link_send" | bc -l)"
[ $has_send = 1 ] && echo "smimestream send first byte: $(ms "$ttfb_cli") ms ($mib MiB)"
exit 0
