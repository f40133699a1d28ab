#!/bin/bash
# A message changed after signing must be rejected by every verifier: one
# base64 letter in the middle of the attachment changed to another valid
# letter (A<->B), and one letter of the attachment's file name in the signed
# MIME header.  Each test point checks, with the same verifier, that the
# original is accepted and the changed copy rejected for a bad signature.
. "$(dirname "$0")/../lib/lib.sh"

att="$WORK/invoice.pdf"
random_file "$att" 200000

# accepts_and_rejects VERIFIER ORIG TAMPERED
accepts_and_rejects() {
    "$1" "$2" || say "$1 did not accept the original message" || return 1
    rejects "$1" "$3" || return 1
    # Rejected for the right reason: the signature/digest does not match.
    local d="$3.d"
    case $1 in
    verify_openssl_cms) grep_file 'digest failure|content verify error|signature failure' "$d/cms.err" ;;
    verify_openssl_smime) grep_file 'digest failure|signature failure|verify error' "$d/smime.err" ;;
    verify_certtool) grep_file 'Signature status: verification failed' "$d/certtool.err" ;;
    verify_gpgsm) grep_file '^\[GNUPG:\] BADSIG' "$d/gpgsm.out" ;;
    esac
}

# changed_only_one_byte A B: the copies differ in exactly one byte.
changed_only_one_byte() {
    local n
    n=$(cmp -l "$1" "$2" | wc -l)
    [ "$n" -eq 1 ] || say "expected exactly one changed byte, found $n"
}

# tamper_filename MSG OUT: change one letter of filename="invoice.pdf"
# inside the signed entity (invoice -> invoicf).
tamper_filename() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import sys
m = open(sys.argv[1], "rb").read()
old = b'filename="invoice.pdf"'
i = m.find(old)
assert i > 0 and m.count(old) == 1, "file name not found once"
m = m[:i] + b'filename="invoicf.pdf"' + m[i + len(old):]
open(sys.argv[2], "wb").write(m)
EOF
}

for key in rsa2048 p256; do
    msg="$WORK/$key.eml"
    signer_args "$key"
    ok "$key: signed" sign_ok "$msg" "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$att"

    bad="$WORK/$key-att.eml"
    ok "$key: one base64 letter in the middle of the attachment changed" \
        eval '"$PYTHON" "$MIMETOOL" tamper "$msg" "$bad" && changed_only_one_byte "$msg" "$bad"'
    for v in verify_openssl_cms verify_openssl_smime verify_certtool verify_gpgsm; do
        ok "$key, attachment changed: ${v#verify_} accepts the original and rejects the changed copy" \
            accepts_and_rejects "$v" "$msg" "$bad"
    done

    bad="$WORK/$key-name.eml"
    ok "$key: one letter of the attachment file name (signed header) changed" \
        eval 'tamper_filename "$msg" "$bad" && changed_only_one_byte "$msg" "$bad"'
    for v in verify_openssl_cms verify_openssl_smime verify_certtool verify_gpgsm; do
        ok "$key, file name changed: ${v#verify_} accepts the original and rejects the changed copy" \
            accepts_and_rejects "$v" "$msg" "$bad"
    done
done

done_testing
