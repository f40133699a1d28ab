#!/bin/bash
# Make a throw-away PKI for the tests: a CA and one signer per key type.
#   mkpki.sh DIR
# Creates DIR/ca.pem, DIR/ca.key and for each NAME in
#   rsa2048 rsa3072 rsapss p256 p384 ed25519
# DIR/NAME.key (PKCS#8 PEM), DIR/NAME.pem (certificate), DIR/NAME-chain.pem
# (certificate + CA), plus DIR/rsa2048-enc.key (passphrase "secret pass"),
# DIR/rsa2048.p12 (passphrase "p12 pass") and DIR/other.key (unrelated key).
# Idempotent: does nothing when DIR/.done exists.  Safe to run concurrently.
set -euo pipefail
dir=$1
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
[ -e "$dir/.done" ] && exit 0
cd "$dir"
export OPENSSL_CONF=/dev/null

openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
    -subj "/O=smimestream test/CN=smimestream test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

cat > leaf.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,nonRepudiation
extendedKeyUsage=emailProtection
subjectAltName=email:scanner@example.org
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT

mkleaf() {
    local name=$1; shift
    openssl genpkey "$@" -out "$name.key" 2>/dev/null
    openssl req -new -key "$name.key" -out "$name.csr" \
        -subj "/O=smimestream test/CN=Scanner $name/emailAddress=scanner@example.org" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -days 3650 -extfile leaf.ext -out "$name.pem" 2>/dev/null
    cat "$name.pem" ca.pem > "$name-chain.pem"
    rm -f "$name.csr"
}
mkleaf rsa2048 -algorithm RSA -pkeyopt rsa_keygen_bits:2048
mkleaf rsa3072 -algorithm RSA -pkeyopt rsa_keygen_bits:3072
mkleaf rsapss -algorithm RSA-PSS -pkeyopt rsa_keygen_bits:2048
mkleaf p256 -algorithm EC -pkeyopt ec_paramgen_curve:P-256
mkleaf p384 -algorithm EC -pkeyopt ec_paramgen_curve:P-384
mkleaf ed25519 -algorithm ED25519
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out other.key 2>/dev/null

openssl pkcs8 -topk8 -in rsa2048.key -out rsa2048-enc.key -passout "pass:secret pass" \
    -v2 aes-256-cbc 2>/dev/null
openssl pkcs12 -export -inkey rsa2048.key -in rsa2048.pem -certfile ca.pem \
    -out rsa2048.p12 -passout "pass:p12 pass" -name "scanner" 2>/dev/null
# PEM bundle: key and its certificate in one file.
cat rsa2048.key rsa2048-chain.pem > rsa2048-bundle.pem
printf 'secret pass\n' > pass.txt
printf 'p12 pass\n' > p12pass.txt
printf 'wrong\n' > wrongpass.txt
chmod 600 pass.txt p12pass.txt wrongpass.txt
touch .done
