#!/bin/bash
# Bad input: each case must fail with the documented sysexits code, say why
# in one line on standard error, and produce no output (nothing on standard
# output, no -o file) -- smimestream(1): "A missing file or a wrong
# passphrase therefore stops the program before any output is produced."
. "$(dirname "$0")/../lib/lib.sh"

signer_args rsa2048
att="$WORK/doc.pdf"
random_file "$att" 5000
ENC=(--signer "$PKI/rsa2048-enc.key" --cert "$PKI/rsa2048-chain.pem")
MSG_ARGS=(--from scanner@example.org --to office@example.org --subject Scan --body Scan)

# run_case PREFIX... -- ARGS...: run [PREFIX] smimestream sign ARGS with no
# input and a time limit; RC, OUT (stdout file) and ERR (stderr file) are set.
N=0
run_case() {
    local prefix=()
    while [ "$1" != -- ]; do prefix+=("$1"); shift; done
    shift
    N=$((N + 1))
    OUT="$WORK/case$N.out"
    ERR="$WORK/case$N.err"
    "${prefix[@]}" timeout -k 5 20 "$SMIMESTREAM" sign "$@" </dev/null >"$OUT" 2>"$ERR"
    RC=$?
}

# fails CODE REGEX PREFIX... -- ARGS...: exit CODE, stderr matches REGEX
# (extended, case-insensitive) and is one line, nothing on stdout.
fails() {
    local code=$1 re=$2
    shift 2
    run_case "$@"
    cat "$ERR" >&2
    [ "$RC" -eq "$code" ] || say "exit code $RC, expected $code" || return 1
    grep -Eiq -- "$re" "$ERR" || say "stderr does not match /$re/" || return 1
    [ "$(wc -l <"$ERR")" -eq 1 ] || say "expected one line on stderr" || return 1
    [ ! -s "$OUT" ] || say "something was written to standard output ($(stat -c %s "$OUT") bytes)"
}

ok "wrong passphrase in --pin-file for an encrypted key: exit 77, 'wrong passphrase'" \
    fails 77 'wrong passphrase' -- "${MSG_ARGS[@]}" "${ENC[@]}" --pin-file "$PKI/wrongpass.txt"
ok "wrong passphrase in --pin-file for a PKCS#12 file: exit 77, 'wrong passphrase'" \
    fails 77 'wrong passphrase' -- "${MSG_ARGS[@]}" --signer "$PKI/rsa2048.p12" --pin-file "$PKI/wrongpass.txt"
ok "encrypted key, no --pin-file, no controlling terminal (setsid, stdin /dev/null): exit 77, 'protected by a passphrase'" \
    fails 77 'protected by a passphrase: give it with --pin-file' setsid -w -- "${MSG_ARGS[@]}" "${ENC[@]}"
ok "key that does not match the certificate (other.key, rsa2048.pem): exit 65, 'does not match'" \
    fails 65 'does not match' -- "${MSG_ARGS[@]}" --signer "$PKI/other.key" --cert "$PKI/rsa2048-chain.pem"
ok "key without any certificate: exit 65, 'no certificate'" \
    fails 65 'no certificate' -- "${MSG_ARGS[@]}" --signer "$PKI/rsa2048.key"
ok "missing attachment file: exit 66, names the file" \
    fails 66 "cannot open attachment .*no-such-scan\\.pdf" -- "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" \
    --attach "$att" --attach "$WORK/no-such-scan.pdf"
ok "attachment that is a directory: exit 66, 'directory'" \
    fails 66 'directory' -- "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$WORK"
ok "missing key file: exit 66, names the file" \
    fails 66 "no-such\\.key" -- "${MSG_ARGS[@]}" --signer "$WORK/no-such.key" --cert "$PKI/rsa2048-chain.pem"
ok "missing certificate file: exit 66, names the file" \
    fails 66 "no-such\\.pem" -- "${MSG_ARGS[@]}" --signer "$PKI/rsa2048.key" --cert "$WORK/no-such.pem"
ok "missing --pin-file: exit 66, names the file" \
    fails 66 "no-such-pin\\.txt" -- "${MSG_ARGS[@]}" "${ENC[@]}" --pin-file "$WORK/no-such-pin.txt"
ok "--subject with CRLF and a Bcc header (header injection): exit 65, 'line break'" \
    fails 65 'line break' -- --from scanner@example.org --to office@example.org \
    --subject $'a\r\nBcc: x@y' "${SIGNER_ARGS[@]}"
ok "--subject with a bare LF: exit 65, 'line break'" \
    fails 65 'line break' -- --from scanner@example.org --to office@example.org \
    --subject $'a\nBcc: x@y' "${SIGNER_ARGS[@]}"
ok "--to with CRLF and a header: exit 65, 'line break'" \
    fails 65 'line break' -- --from scanner@example.org --to $'a@b\r\nX: y' "${SIGNER_ARGS[@]}"
ok "--header with CRLF and a Bcc header: exit 65, 'line break'" \
    fails 65 'line break' -- "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" --header $'X-Scan: a\r\nBcc: evil@example.org'
ok "--header Subject (set by smimestream itself): exit 65" \
    fails 65 'Subject' -- "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" --header 'Subject: other'
ok "--attach-name with a quote and CRLF: exit 65, 'line break'" \
    fails 65 'line break' -- "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$att" \
    --attach-name $'a"\r\nX-Evil: y.pdf'
ok "malformed address --to 'not an address': exit 65, 'not a valid'" \
    fails 65 'not a valid' -- --from scanner@example.org --to 'not an address' "${SIGNER_ARGS[@]}"
ok "--body-file that is not UTF-8: exit 65, 'UTF-8'" \
    eval 'printf "caf\xe9\n" >"$WORK/latin1.txt"; fails 65 "UTF-8" -- --from scanner@example.org --to office@example.org --body-file "$WORK/latin1.txt" "${SIGNER_ARGS[@]}"'
ok "--digest foo: exit 64, 'not known'" \
    fails 64 'not known' -- "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" --digest foo
ok "--digest md5 without --allow-weak-digest: exit 64, 'weak'" \
    fails 64 'weak' -- "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" --digest md5
ok "--digest sha1 without --allow-weak-digest: exit 64, 'weak'" \
    fails 64 'weak' -- "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" --digest sha1
ok "--digest sha256 with an Ed25519 key: exit 64, 'SHA-512'" \
    fails 64 'SHA-512' -- "${MSG_ARGS[@]}" --signer "$PKI/ed25519.key" --cert "$PKI/ed25519-chain.pem" --digest sha256
ok "no --signer: exit 64, 'no signer'" fails 64 'no signer' -- "${MSG_ARGS[@]}"
ok "no --from: exit 64, 'no sender'" \
    fails 64 'no sender' -- --to office@example.org "${SIGNER_ARGS[@]}"
ok "--attach - twice: exit 64, 'only once'" \
    fails 64 'only once' -- "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach - --attach -
ok "--attach-name before any --attach: exit 64" \
    fails 64 'attach-name' -- "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach-name x.pdf
ok "a stray argument (an attachment without --attach): exit 64, 'unexpected argument'" \
    fails 64 'unexpected argument' -- "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" "$att"

# ---- weak digests when allowed ------------------------------------------------------
# OpenSSL 3 may refuse md5/sha1 signatures by policy, so only the exit code
# and the micalg are checked, and that openssl at least parses the message.
for d in md5:md5 sha1:sha-1; do
    msg="$WORK/weak-${d%%:*}.eml"
    ok "--digest ${d%%:*} --allow-weak-digest: exit 0 and micalg=${d#*:}" \
        eval 'sign_ok "$msg" "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" --digest "${d%%:*}" --allow-weak-digest && [ "$(micalg "$msg")" = "${d#*:}" ] || say "micalg is $(micalg "$msg")"'
done

# ---- failures with -o leave no file ----------------------------------------------------
# no_file_left OUT: neither OUT nor a temporary OUT.partial-* exists.
no_file_left() {
    [ ! -e "$1" ] || say "$1 was created" || return 1
    local left
    left=$(ls "$1".partial-* 2>/dev/null)
    [ -z "$left" ] || say "temporary file left behind: $left"
}
out="$WORK/wrongpass.eml"
ok "wrong passphrase with -o FILE: exit 77 and no file" \
    eval 'sign "$out" "${MSG_ARGS[@]}" "${ENC[@]}" --pin-file "$PKI/wrongpass.txt" --attach "$att"; [ "$SIGN_RC" -eq 77 ] || say "exit $SIGN_RC"; [ "$SIGN_RC" -eq 77 ] && no_file_left "$out"'
# An existing -o FILE is replaced only by a complete message: a run that
# fails (here: in the middle, on a read error) leaves the old file as it was.
out="$WORK/existing.eml"
printf 'the previous message\n' >"$out"
cp "$out" "$WORK/existing.orig"
ok "existing -o FILE and a run that fails half way (read error): exit 74, FILE unchanged, no temporary left" \
    eval 'sign "$out" "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$att" --attach /proc/self/mem; [ "$SIGN_RC" -eq 74 ] || say "exit $SIGN_RC"; [ "$SIGN_RC" -eq 74 ] && same_file "$WORK/existing.orig" "$out" && [ -z "$(ls "$out".partial-* 2>/dev/null)" ]'
# A read error in the middle of writing (reading /proc/self/mem from offset 0
# fails with EIO): exit 74, and the half-written message is removed.
out="$WORK/ioerr.eml"
ok "attachment read error (EIO) with -o FILE: exit 74, no file left" \
    eval 'sign "$out" "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$att" --attach /proc/self/mem; cat "$out.err" >&2; [ "$SIGN_RC" -eq 74 ] || say "exit $SIGN_RC"; [ "$SIGN_RC" -eq 74 ] && no_file_left "$out"'
ok "-o in a directory that does not exist: exit 73, 'cannot create'" \
    fails 73 'cannot create' -- -o "$WORK/no/such/dir/x.eml" "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}"
ok "-o /dev/full (every write fails with ENOSPC): exit 74, 'No space'" \
    fails 74 'No space' -- -o /dev/full "${MSG_ARGS[@]}" "${SIGNER_ARGS[@]}"

# ---- the passphrase is checked before any attachment is read ------------------------------
# The attachment is a FIFO that this shell holds open for writing (O_RDWR, so
# opening it does not block) and never writes to: a read from it would wait
# for ever.  A wrong passphrase must end the run with 77 without reading;
# timeout's 124 means smimestream was stuck reading the attachment.
fifo="$WORK/never.fifo"
mkfifo "$fifo"
exec 7<>"$fifo"
ok "wrong passphrase with a FIFO attachment that never delivers data: exit 77 within 10 s (not 124)" \
    eval 'timeout -k 2 10 "$SMIMESTREAM" sign "${MSG_ARGS[@]}" "${ENC[@]}" --pin-file "$PKI/wrongpass.txt" --attach "$fifo" 7<&- >"$WORK/never.out" 2>"$WORK/never.err" </dev/null; rc=$?; cat "$WORK/never.err" >&2; [ $rc -eq 77 ] || say "exit code $rc, expected 77 (124: it was reading the attachment)"'
# And the same FIFO with a correct passphrase does wait for data (so the
# test above can fail): it is still running after 1 s.
ok "(control) correct passphrase with that FIFO: smimestream waits for the data (still running after 1 s)" \
    eval 'timeout -k 2 1 "$SMIMESTREAM" sign "${MSG_ARGS[@]}" "${ENC[@]}" --pin-file "$PKI/pass.txt" --attach "$fifo" 7<&- >/dev/null 2>&1 </dev/null; rc=$?; [ $rc -eq 124 ] || say "exit code $rc, expected 124 (timeout)"'
exec 7<&-

done_testing
