#!/bin/bash
# Hash-only proof: OpenSC's pkcs11-spy sits in front of SoftHSM2 (through
# module-path= in the URI) and logs every PKCS#11 call while a 64 MiB
# attachment is signed.  The token must see exactly one C_Sign per message,
# with a DigestInfo (RSA PKCS#1 v1.5, at most 83 bytes), a bare hash
# (RSA-PSS, ECDSA: at most 64 bytes) or the signed-attribute bytes (Ed25519,
# well under 1 KiB), and no C_Digest*, C_SignUpdate or C_Encrypt* at all.
. "$(dirname "$0")/../lib/lib.sh"
. "$(dirname "$0")/p11lib.sh"
need_tools
need_spy

token_init ci || bail_out "cannot create a SoftHSM2 token"
for spec in rsa2048:01 rsapss:02 p256:03 ed25519:04; do
    token_put_signer ci "${spec%%:*}" "${spec#*:}" || bail_out "cannot import ${spec%%:*}"
done

BIG=$((64 * 1024 * 1024))
SHA256_DI=3031300D060960864801650304020105000420
SHA512_DI=3051300D060960864801650304020305000440

# sign_big KEY LOG OUT ARGS...: 64 MiB from a pipe (read once, never seekable)
# signed with KEY through the spy.
sign_big() {
    local key=$1 log=$2 out=$3
    shift 3
    head -c "$BIG" /dev/zero |
        with_spy "$log" "$SMIMESTREAM" sign -o "$out" "${STD_ARGS[@]}" --attach - --attach-name scan.raw \
            --signer "$(spy_uri "pkcs11:token=ci;object=$key")" --pin-file "$PIN_FILE" "$@" 2>"$out.err"
    local rc=$?
    [ $rc -eq 0 ] || { cat "$out.err" >&2; say "smimestream sign exited with $rc"; }
}

no_bulk_calls() {
    local bad
    bad=$(grep -E '^[0-9]+: C_(Digest|SignUpdate|SignFinal|Encrypt|VerifyUpdate)' "$1")
    [ -z "$bad" ] || say "unexpected calls: $bad"
}

# signed_attrs_len MSG: the length of the DER signedAttrs in the signature
# (ContentInfo > [0] > SignedData > SET > SignerInfo > [0], depth 5).
signed_attrs_len() {
    split_entity "$1" >/dev/null 2>&1 || return 1
    openssl asn1parse -inform DER -in "$1.d/sig.der" 2>/dev/null |
        sed -n 's/.*:d=5 *hl=\([0-9]*\) *l= *\([0-9]*\) cons: cont \[ 0 \].*/\1 \2/p' |
        awk '{ print $1 + $2; exit }'
}

for key in rsa2048 rsapss p256 ed25519; do
    LOG=$WORK/spy-$key.log
    M=$WORK/$key.eml
    ok "$key: a 64 MiB attachment is signed through pkcs11-spy" sign_big "$key" "$LOG" "$M"
    is "$(spy_count "$LOG" C_Sign)" 1 "$key: exactly one C_Sign for the message"
    is "$(spy_count "$LOG" C_SignInit)" 1 "$key: exactly one C_SignInit"
    ok "$key: no C_Digest*, C_SignUpdate, C_SignFinal or C_Encrypt* calls" no_bulk_calls "$LOG"
    len=$(spy_sign_lens "$LOG" | head -n 1)
    diag "$key: C_Sign was given $len bytes; the largest input of any call was $(spy_max_in_len "$LOG") bytes"
    case $key in
    rsa2048)
        ok "rsa2048: C_Sign gets at most 83 bytes (it got $len)" test "${len:-999}" -le 83
        is "$(spy_sign_data "$LOG" 1 | cut -c1-38)" "$SHA256_DI" "rsa2048: the data is a SHA-256 DigestInfo"
        ok "rsa2048: the mechanism is CKM_RSA_PKCS" grep -qE 'pMechanism->type = CKM_RSA_PKCS *$' "$LOG"
        ;;
    rsapss)
        ok "rsapss: C_Sign gets at most 64 bytes (it got $len)" test "${len:-999}" -le 64
        ok "rsapss: the mechanism is CKM_RSA_PKCS_PSS" grep -qE 'pMechanism->type = CKM_RSA_PKCS_PSS' "$LOG"
        ;;
    p256)
        ok "p256: C_Sign gets at most 64 bytes (it got $len)" test "${len:-999}" -le 64
        ok "p256: the mechanism is CKM_ECDSA" grep -qE 'pMechanism->type = CKM_ECDSA *$' "$LOG"
        ;;
    ed25519)
        sa=$(signed_attrs_len "$M")
        ok "ed25519: C_Sign gets the signed attributes, under 1 KiB ($len bytes)" test "${len:-9999}" -lt 1024
        is "$len" "$sa" "ed25519: the length equals the DER signed attributes in the SignedData"
        ok "ed25519: the mechanism is CKM_EDDSA" grep -qE 'pMechanism->type = CKM_EDDSA' "$LOG"
        ;;
    esac
    max=$(spy_max_in_len "$LOG")
    ok "$key: no call carried more than 4 KiB of input (largest: $max)" test "${max:-0}" -le 4096
done
ok "rsa2048: the 64 MiB message verifies with openssl cms" verify_openssl_cms "$WORK/rsa2048.eml"
ok "ed25519: the 64 MiB message verifies with certtool" verify_certtool "$WORK/ed25519.eml"

# SHA-512 makes the largest DigestInfo: 19 + 64 = 83 bytes.
LOG=$WORK/spy-sha512.log
M=$WORK/sha512.eml
ok "rsa2048 with --digest sha512 signs through the spy" \
    with_spy "$LOG" sign_ok "$M" "${STD_ARGS[@]}" --digest sha512 \
    --signer "$(spy_uri "pkcs11:token=ci;object=rsa2048")" --pin-file "$PIN_FILE"
is "$(spy_sign_lens "$LOG")" 83 "rsa2048 sha512: C_Sign gets the 83-byte DigestInfo"
is "$(spy_sign_data "$LOG" 1 | cut -c1-38)" "$SHA512_DI" "rsa2048 sha512: the data is a SHA-512 DigestInfo"
ok "rsa2048 sha512: openssl cms accepts it" verify_openssl_cms "$M"

done_testing
