#!/bin/bash
# Benchmark: smimestream sign against the OpenSSL streaming pipeline
#   { printf HEADER; base64 -w 76 FILE; } | openssl smime -sign -stream
# on the same file, in one run, reporting throughput ratios and peak RSS.
# Not a test: numbers depend on the machine; compare ratios only.
#
#   tests/bench/sign-bench.sh [BUILD_DIR]     (BENCH_MIB=1024 by default)
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build}
mib=${BENCH_MIB:-1024}
runs=${BENCH_RUNS:-3}
sms=$build/agent/smimestream
export SMIMESTREAM_PLUGIN_DIR=$build/plugins/software
work=$(mktemp -d /tmp/sms-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$top/tests/lib/mkpki.sh" "$work/pki"
key=$work/pki/rsa2048.key cert=$work/pki/rsa2048-chain.pem

mkfile() { head -c $(($1 * 1024 * 1024)) /dev/urandom > "$2"; }
mkfile "$mib" "$work/big.bin"
mkfile 64 "$work/64.bin"
cat "$work/big.bin" > /dev/null   # warm the page cache for both contenders

now() { date +%s.%N; }

run_sms() { # FILE -> prints "seconds maxrss_kib"
    local t0 t1
    t0=$(now)
    /usr/bin/time -f %M -o "$work/sms.rss" "$sms" sign --from a@example.org --to b@example.org \
        --subject bench --attach "$1" --signer "$key" --cert "$cert" -o /dev/null
    t1=$(now)
    echo "$(echo "$t1 - $t0" | bc -l) $(cat "$work/sms.rss")"
}

run_openssl() { # FILE -> prints "seconds maxrss_kib(openssl)"
    local t0 t1
    t0=$(now)
    # The issue's pipeline as given: text mode, so OpenSSL turns base64's LF
    # line ends into CRLF as S/MIME needs (-binary would sign LF lines).
    { printf 'Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\nContent-Disposition: attachment; filename="big.bin"\n\n'
      base64 -w 76 "$1"; } |
        /usr/bin/time -f %M -o "$work/ossl.rss" openssl smime -sign -stream \
            -signer "$cert" -inkey "$key" -md sha256 -out /dev/null
    t1=$(now)
    echo "$(echo "$t1 - $t0" | bc -l) $(cat "$work/ossl.rss")"
}

echo "file: $mib MiB, $runs runs each, alternating; best time counts"
best_s=999999 best_o=999999 rss_s=0 rss_o=0
for i in $(seq "$runs"); do
    read -r t r < <(run_sms "$work/big.bin")
    echo "  smimestream  run $i: ${t}s  peak RSS ${r} KiB"
    best_s=$(echo "if ($t < $best_s) $t else $best_s" | bc -l); rss_s=$r
    read -r t r < <(run_openssl "$work/big.bin")
    echo "  openssl      run $i: ${t}s  peak RSS ${r} KiB"
    best_o=$(echo "if ($t < $best_o) $t else $best_o" | bc -l); rss_o=$r
done
read -r _ rss64 < <(run_sms "$work/64.bin")

mbps() { echo "scale=1; $mib * 1.048576 / $1" | bc -l; }
echo
echo "smimestream: $(mbps "$best_s") MB/s of attachment, peak RSS $rss_s KiB ($mib MiB), $rss64 KiB (64 MiB)"
echo "openssl:     $(mbps "$best_o") MB/s of attachment, peak RSS $rss_o KiB (openssl process alone)"
echo "throughput ratio smimestream/openssl: $(echo "scale=2; $best_o / $best_s" | bc -l)"
