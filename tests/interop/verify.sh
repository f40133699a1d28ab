#!/bin/bash
# Interop matrix: messages signed by `smimestream sign` with every key type and
# digest must verify with openssl cms, openssl smime, GnuTLS certtool and
# gpgsm, and the attachment that comes back must be the file that went in.
. "$(dirname "$0")/../lib/lib.sh"

att="$WORK/Scan 0042.pdf"
random_file "$att" 300001   # not a multiple of 3: the base64 ends with padding

# verifier_points LABEL MSG CERT
# Four test points, one per verifier, and one for the attachment.  Known
# limits of a peer are given in SMIME_SKIP, CERTTOOL_SKIP (reasons) and
# GPGSM_HASH_LIMIT=1 (see below); they are reset afterwards.
verifier_points() {
    local label=$1 msg=$2 cert=$3
    ok "$label: openssl cms -verify accepts it, returns the signed entity, signer is $(basename "$cert")" \
        cms_and_signer "$msg" "$cert"
    if [ -n "${SMIME_SKIP:-}" ]; then
        skip "$label: openssl smime -verify" "$SMIME_SKIP"
    else
        ok "$label: openssl smime -verify accepts it and returns the signed entity" \
            verify_openssl_smime "$msg"
    fi
    if [ -n "${CERTTOOL_SKIP:-}" ]; then
        skip "$label: certtool --p7-verify" "$CERTTOOL_SKIP"
    else
        ok "$label: certtool --p7-verify accepts it" verify_certtool "$msg"
    fi
    if [ -n "${GPGSM_HASH_LIMIT:-}" ]; then
        ok "$label: gpgsm --verify gives GOODSIG (gpgsm 2.2 may refuse a hash shorter than the curve)" \
            gpgsm_good_or_hash_limit "$msg"
    else
        ok "$label: gpgsm --verify gives GOODSIG" verify_gpgsm "$msg"
    fi
    ok "$label: the attachment openssl returned is byte-identical to the input" \
        attachment_is "$msg" 2 "$att" "Scan 0042.pdf"
    SMIME_SKIP='' CERTTOOL_SKIP='' GPGSM_HASH_LIMIT=''
}

# gpgsm 2.2 checks an ECDSA signature whose hash is shorter than the curve
# (P-384 with sha256), says GOODSIG, and then fails the verification with
# "a 256 bit hash is not valid for a 384 bit ECC key" (exit 2).  Accept that
# known refusal, or a plain success from a gpgsm without the limit; anything
# else (BADSIG, no GOODSIG) fails.
gpgsm_good_or_hash_limit() {
    verify_gpgsm "$1" && return 0
    local d="$1.d"
    grep -q '^\[GNUPG:\] GOODSIG' "$d/gpgsm.out" || say "gpgsm: no GOODSIG" || return 1
    grep -q 'bit hash is not valid for a .* bit ECC key' "$d/gpgsm.err" ||
        say "gpgsm failed for another reason than its hash-size rule"
}

# certtool_can_pss KEY DIGEST: can this certtool verify an RSA-PSS CMS
# signature with DIGEST at all?  GnuTLS 3.7's PKCS#7 code maps the rsassaPss
# OID to RSA-PSS-SHA256 and ignores the parameters (gnutls_oid_to_sign in
# gnutls_pkcs7_get_signature_info), so PSS with sha384/sha512 fails even for
# a signature made by `openssl cms -sign`.  The reference made here decides
# whether the smimestream message is checked or the point is skipped.
certtool_can_pss() {
    local key=$1 d=$2 ref="$WORK/ref-$1-$2"
    printf 'reference\r\n' >"$ref.txt"
    local opts=()
    # The padding mode first: openssl applies the key options in order.
    [ "$key" = rsapss ] || opts+=(-keyopt rsa_padding_mode:pss)
    opts+=(-keyopt rsa_pss_saltlen:digest)
    openssl cms -sign -binary -in "$ref.txt" -signer "$PKI/$key.pem" -inkey "$PKI/$key.key" \
        -md "$d" "${opts[@]}" -outform DER -out "$ref.der" 2>/dev/null || return 1
    certtool --p7-verify --inder --infile "$ref.der" --load-data "$ref.txt" \
        --load-ca-certificate "$CA" >/dev/null 2>&1
}

# cms_and_signer MSG CERT: openssl cms accepts MSG and the signer it names is CERT.
cms_and_signer() {
    verify_openssl_cms "$1" || return 1
    local got want
    got=$(openssl x509 -in "$1.d/cms.signer.pem" -noout -fingerprint -sha256) || return 1
    want=$(openssl x509 -in "$2" -noout -fingerprint -sha256) || return 1
    [ "$got" = "$want" ] || say "signer certificate is $got, expected $want"
}

# signed LABEL MSG DIGEST SIGALG MICALG ARGS...: sign, then check the
# micalg parameter and the SignerInfo algorithms.
signed() {
    local label=$1 msg=$2 dig=$3 alg=$4 mic=$5
    shift 5
    ok "$label: smimestream sign exits 0; micalg=$mic; SignerInfo uses $dig and $alg" \
        sign_and_check "$msg" "$dig" "$alg" "$mic" "$@"
}

sign_and_check() {
    local msg=$1 dig=$2 alg=$3 mic=$4
    shift 4
    sign_ok "$msg" "${STD_ARGS[@]}" --attach "$att" "$@" || return 1
    local got
    got=$(micalg "$msg")
    [ "$got" = "$mic" ] || say "micalg is '$got', expected '$mic'" || return 1
    algs_are "$msg" "$dig" "$alg"
}

declare -A MICALG=([sha256]=sha-256 [sha384]=sha-384 [sha512]=sha-512)

# ---- RSA PKCS#1 v1.5 -------------------------------------------------------
for key in rsa2048 rsa3072; do
    for d in sha256 sha384 sha512; do
        msg="$WORK/$key-$d.eml"
        signer_args "$key"
        signed "$key $d" "$msg" "$d" rsaEncryption "${MICALG[$d]}" \
            "${SIGNER_ARGS[@]}" --digest "$d"
        verifier_points "$key $d" "$msg" "$PKI/$key.pem"
    done
done

# ---- RSA-PSS ------------------------------------------------------------------
# With an RSASSA-PSS certificate (the key can only do PSS).
for d in sha256 sha384; do
    msg="$WORK/rsapss-$d.eml"
    signer_args rsapss
    signed "rsapss certificate $d" "$msg" "$d" rsassaPss "${MICALG[$d]}" \
        "${SIGNER_ARGS[@]}" --digest "$d"
    certtool_can_pss rsapss "$d" ||
        CERTTOOL_SKIP="GnuTLS $(certtool --version | sed -n '1s/.* //p') PKCS#7 verifies RSA-PSS only with sha256 (an openssl-made $d reference fails too)"
    verifier_points "rsapss certificate $d" "$msg" "$PKI/rsapss.pem"
done
# --pss with an ordinary RSA key and rsaEncryption certificate.
for d in sha256 sha512; do
    msg="$WORK/rsa2048-pss-$d.eml"
    signer_args rsa2048
    signed "rsa2048 --pss $d" "$msg" "$d" rsassaPss "${MICALG[$d]}" \
        "${SIGNER_ARGS[@]}" --pss --digest "$d"
    # Known limit of OpenSSL 3.0: `openssl smime` (the PKCS#7 code) checks
    # RSA-PSS as PKCS#1 v1.5 when the certificate is rsaEncryption ("invalid
    # padding"); `openssl cms` accepts the same message.
    SMIME_SKIP="openssl smime (OpenSSL 3.0) cannot verify RSA-PSS with an rsaEncryption certificate"
    certtool_can_pss rsa2048 "$d" ||
        CERTTOOL_SKIP="GnuTLS $(certtool --version | sed -n '1s/.* //p') PKCS#7 verifies RSA-PSS only with sha256 (an openssl-made $d reference fails too)"
    verifier_points "rsa2048 --pss $d" "$msg" "$PKI/rsa2048.pem"
done

# ---- ECDSA ---------------------------------------------------------------------
for key in p256 p384; do
    for d in sha256 sha384; do
        msg="$WORK/$key-$d.eml"
        signer_args "$key"
        signed "$key $d" "$msg" "$d" "ecdsa-with-${d^^}" "${MICALG[$d]}" \
            "${SIGNER_ARGS[@]}" --digest "$d"
        [ "$key-$d" = p384-sha256 ] && GPGSM_HASH_LIMIT=1
        verifier_points "$key $d" "$msg" "$PKI/$key.pem"
    done
done
# Without --digest the digest follows the key (smimestream(1)): sha384 for
# P-384, which every verifier takes (gpgsm 2.2 refuses sha256 with P-384).
msg="$WORK/p384-default.eml"
signer_args p384
signed "p384 without --digest" "$msg" sha384 ecdsa-with-SHA384 sha-384 "${SIGNER_ARGS[@]}"
verifier_points "p384 without --digest" "$msg" "$PKI/p384.pem"

# ---- Ed25519 -------------------------------------------------------------------
# Ed25519 in CMS (RFC 8419) is pure EdDSA with sha512 as the message digest.
# Only certtool is asked: OpenSSL 3.0 and gpgsm 2.2 cannot verify Ed25519 CMS
# signatures at all (known limits of those peers, not of smimestream).
msg="$WORK/ed25519.eml"
signer_args ed25519
signed "ed25519" "$msg" sha512 ED25519 sha-512 "${SIGNER_ARGS[@]}"
ok "ed25519: certtool --p7-verify accepts it" verify_certtool "$msg"
ok "ed25519: the attachment in the signed entity is byte-identical to the input" \
    eval 'extract_parts "$msg.d/entity" "$msg.d/parts" && attachment_is "$msg" 2 "$att" "Scan 0042.pdf"'

# ---- other key containers -------------------------------------------------------
msg="$WORK/p12.eml"
signed "PKCS#12 with --pin-file" "$msg" sha256 rsaEncryption sha-256 \
    --signer "$PKI/rsa2048.p12" --pin-file "$PKI/p12pass.txt"
verifier_points "PKCS#12 with --pin-file" "$msg" "$PKI/rsa2048.pem"

msg="$WORK/enc.eml"
signed "encrypted PKCS#8 with --pin-file" "$msg" sha256 rsaEncryption sha-256 \
    --signer "$PKI/rsa2048-enc.key" --cert "$PKI/rsa2048-chain.pem" --pin-file "$PKI/pass.txt"
verifier_points "encrypted PKCS#8 with --pin-file" "$msg" "$PKI/rsa2048.pem"

msg="$WORK/bundle.eml"
signed "PEM bundle (key and chain in one file, no --cert)" "$msg" sha256 rsaEncryption sha-256 \
    --signer "$PKI/rsa2048-bundle.pem"
verifier_points "PEM bundle" "$msg" "$PKI/rsa2048.pem"

done_testing
