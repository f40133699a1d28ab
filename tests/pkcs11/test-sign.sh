#!/bin/bash
# Keys on a SoftHSM2 token sign messages that real verifiers accept:
# RSA (PKCS#1 v1.5 and PSS), an RSASSA-PSS key, ECDSA P-256 and Ed25519.
# OpenSSL 3.0 and gpgsm 2.2 cannot verify Ed25519 CMS at all (TESTING.md),
# so Ed25519 is checked with certtool only.
. "$(dirname "$0")/../lib/lib.sh"
. "$(dirname "$0")/p11lib.sh"
need_tools certtool gpgsm

token_init ci || bail_out "cannot create a SoftHSM2 token"
for spec in rsa2048:01 rsapss:02 p256:03 ed25519:04 p384:06; do
    token_put_signer ci "${spec%%:*}" "${spec#*:}" || bail_out "cannot import ${spec%%:*}"
done
# The CA on the token too: the plugin sends the chain it finds there.
token_put_cert ci "$CA" "test CA" ca || bail_out "cannot import the CA"
# p256 has a public key object: the plugin compares its CKA_EC_POINT with
# the certificate.  ed25519 has none: the certificate with the key's CKA_ID
# is taken as its pair.  RSA keys are compared by CKA_MODULUS.
token_put_pubkey ci "$PKI/p256.key" p256 03 || bail_out "cannot import the p256 public key"
# A key without a certificate on the token, for --cert.
token_put_key ci "$PKI/rsa3072.key" bare 05 || bail_out "cannot import rsa3072"

ATT=$WORK/scan.bin
random_file "$ATT" 300000
MSG_ARGS=("${STD_ARGS[@]}" --attach "$ATT")

# cert_count MSG: certificates in the SignedData.
cert_count() {
    split_entity "$1" >/dev/null 2>&1 || return 1
    openssl pkcs7 -inform DER -in "$1.d/sig.der" -print_certs 2>/dev/null | grep -c '^subject='
}

for key in rsa2048 rsapss p256; do
    M=$WORK/$key.eml
    ok "$key on the token signs" sign_ok "$M" "${MSG_ARGS[@]}" --signer "pkcs11:token=ci;object=$key" --pin-file "$PIN_FILE"
    ok "$key: openssl cms -verify accepts it" verify_openssl_cms "$M"
    ok "$key: certtool --p7-verify accepts it" verify_certtool "$M"
    ok "$key: gpgsm --verify accepts it" verify_gpgsm "$M"
    ok "$key: the attachment arrives unchanged" attachment_is "$M" 2 "$ATT" scan.bin
    is "$(cert_count "$M")" 2 "$key: the SignedData has the leaf and the CA from the token"
done
ok "rsapss: the signature is RSASSA-PSS" sig_alg_matches "$WORK/rsapss.eml" rsassaPss
ok "rsa2048: the signature is PKCS#1 v1.5" sig_alg_matches "$WORK/rsa2048.eml" 'sha256WithRSAEncryption|rsaEncryption'

M=$WORK/rsa2048-pss.eml
ok "rsa2048 with --pss signs (CKM_RSA_PKCS_PSS)" sign_ok "$M" "${MSG_ARGS[@]}" --pss --signer "pkcs11:token=ci;object=rsa2048" --pin-file "$PIN_FILE"
ok "rsa2048 --pss: openssl cms accepts it" verify_openssl_cms "$M"
ok "rsa2048 --pss: certtool accepts it" verify_certtool "$M"
ok "rsa2048 --pss: gpgsm accepts it" verify_gpgsm "$M"
ok "rsa2048 --pss: the signature is RSASSA-PSS" sig_alg_matches "$M" rsassaPss

M=$WORK/p256-sha384.eml
ok "p256 with --digest sha384 signs" sign_ok "$M" "${MSG_ARGS[@]}" --digest sha384 --signer "pkcs11:token=ci;object=p256" --pin-file "$PIN_FILE"
ok "p256 sha384: openssl cms accepts it" verify_openssl_cms "$M"
ok "p256 sha384: certtool accepts it" verify_certtool "$M"

M=$WORK/p384.eml
ok "p384 on the token signs (r||s of 48 bytes each to DER)" sign_ok "$M" "${MSG_ARGS[@]}" --signer "pkcs11:token=ci;object=p384" --pin-file "$PIN_FILE"
ok "p384: openssl cms accepts it" verify_openssl_cms "$M"
ok "p384: gpgsm accepts it" verify_gpgsm "$M"

M=$WORK/ed25519.eml
ok "ed25519 on the token signs (CKM_EDDSA)" sign_ok "$M" "${MSG_ARGS[@]}" --signer "pkcs11:token=ci;object=ed25519" --pin-file "$PIN_FILE"
ok "ed25519: certtool --p7-verify accepts it" verify_certtool "$M"
# Without openssl, take the parts from the signed entity certtool checked.
entity_attachment_is() {
    split_entity "$1" && extract_parts "$1.d/entity" "$1.d/parts" && same_file "$2" "$1.d/parts/2.bin"
}
ok "ed25519: the attachment arrives unchanged" entity_attachment_is "$M" "$ATT"
skip "ed25519: openssl cms -verify" "OpenSSL 3.0 does not verify Ed25519 CMS signatures"
skip "ed25519: gpgsm --verify" "gpgsm 2.2 does not verify Ed25519 CMS signatures"

M=$WORK/by-id.eml
ok "the key can be named by id= alone" sign_ok "$M" "${MSG_ARGS[@]}" --signer "pkcs11:token=ci;id=%03" --pin-file "$PIN_FILE"
ok "by id: openssl cms accepts it" verify_openssl_cms "$M"

M=$WORK/module-name.eml
ok "module-name=softhsm2 picks p11-kit's configured SoftHSM2 module" sign_ok "$M" "${MSG_ARGS[@]}" --signer "pkcs11:token=ci;object=p256?module-name=softhsm2" --pin-file "$PIN_FILE"
ok "module-path= of SoftHSM2 itself works too" sign_ok "$WORK/module-path.eml" "${MSG_ARGS[@]}" --signer "pkcs11:token=ci;object=p256?module-path=$SOFTHSM_LIB" --pin-file "$PIN_FILE"

M=$WORK/full-uri.eml
ok "a full URI as p11tool prints it (type=private, serial, model) works" sign_ok "$M" "${MSG_ARGS[@]}" \
    --signer "$(GNUTLS_PIN=$USER_PIN p11tool --provider "$SOFTHSM_LIB" --login --list-privkeys --only-urls 'pkcs11:token=ci;object=rsa2048' | head -n 1)" --pin-file "$PIN_FILE"

M=$WORK/bare.eml
ok "a key without a certificate on the token signs with --cert" sign_ok "$M" "${MSG_ARGS[@]}" --signer "pkcs11:token=ci;object=bare" --cert "$PKI/rsa3072-chain.pem" --pin-file "$PIN_FILE"
ok "bare + --cert: openssl cms accepts it" verify_openssl_cms "$M"
ok "bare + --cert: gpgsm accepts it" verify_gpgsm "$M"

M=$WORK/cert-override.eml
ok "--cert replaces the token's chain" sign_ok "$M" "${MSG_ARGS[@]}" --signer "pkcs11:token=ci;object=rsa2048" --cert "$PKI/rsa2048.pem" --pin-file "$PIN_FILE"
is "$(cert_count "$M")" 1 "--cert with only the leaf: the SignedData has just the leaf"

M=$WORK/ca-only.eml
ok "--cert with only the CA: the leaf still comes from the token" sign_ok "$M" "${MSG_ARGS[@]}" --signer "pkcs11:token=ci;object=p256" --cert "$CA" --pin-file "$PIN_FILE"
ok "ca-only: openssl cms accepts it" verify_openssl_cms "$M"

ok "a --cert for another key is refused before signing (65)" expect_fail "$WORK/mismatch.eml" 65 \
    "no certificate in .*rsa2048.pem.* belongs to key 'p256'" \
    "${MSG_ARGS[@]}" --signer "pkcs11:token=ci;object=p256" --cert "$PKI/rsa2048.pem" --pin-file "$PIN_FILE"

done_testing
