#!/bin/bash
# Message shapes: several attachments, an empty one, every byte value, text
# that looks like MIME delimiters, dot-stuffing or mbox "From " lines, with
# bare CR, bare LF and CRLF, in an attachment and in the body.  Each message
# must verify with openssl (cms and smime), certtool and gpgsm, keep its MIME
# structure (no content line that looks like a delimiter), and give back
# every attachment byte for byte.
. "$(dirname "$0")/../lib/lib.sh"

signer_args rsa2048

# ---- inputs ----------------------------------------------------------------
one="$WORK/one.bin";    random_file "$one" 1
line="$WORK/line.bin";  random_file "$line" 57     # exactly one base64 line
big="$WORK/big.bin";    random_file "$big" 100000
empty="$WORK/empty.txt"; : >"$empty"
allbytes="$WORK/allbytes.bin"
"$PYTHON" -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 4099)' >"$allbytes"
tricky="$WORK/tricky.txt"
# Lines that break naive MIME, SMTP and mbox handling, with every line end.
printf '%s\r\n' 'first line' '--=_sms_' '--=_sms_0123456789abcdef0123456789abcdef' \
    '--=_sms_0123456789abcdef0123456789abcdef--' '--' '.' '..' 'From me' '>From me' >"$tricky"
printf 'bare CR\rin the middle\rand bare LF\nthen CRLF\r\n.\n--=_sms_\nFrom me\n' >>"$tricky"
printf 'trailing space \r\ntrailing tab\t\n=3D not an escape\nno line end at the end' >>"$tricky"
body="$WORK/body.txt"
printf '%s\n' 'Dear office,' '--=_sms_' '--=_sms_0123456789abcdef0123456789abcdef--' '--' \
    '.' 'From me' 'a = b' 'Übergröße' >"$body"
printf 'bare CR\rstays\r\nCRLF line\r\nbare LF line\nend.\n' >>"$body"

# What a text/plain body becomes: line ends are canonical CRLF (a bare LF is a
# line end; a bare CR is kept as data).
canonical_body="$WORK/body.canonical"
"$PYTHON" -c 'import sys; d = open(sys.argv[1], "rb").read(); sys.stdout.buffer.write(d.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))' \
    "$body" >"$canonical_body"

# structure_ok MSG N: CRLF everywhere, no line over the hard limit of 998
# (RFC 5322), every "--" line is a delimiter, and N + 1 inner parts (body +
# N attachments).  The 78-character rule is one test point of its own below.
structure_ok() {
    "$PYTHON" "$MIMETOOL" check-lines "$1" 998 || return 1
    local n
    n=$("$PYTHON" "$MIMETOOL" delims "$1") || return 1
    [ "$n" -eq $(($2 + 1)) ] || say "found $n inner delimiters, expected $(($2 + 1))"
}

# all_verify MSG: openssl cms, openssl smime, certtool and gpgsm accept MSG.
all_verify() { verify_all "$1"; }

# round_trip MSG FILE:NAME...: part 2, 3, ... are these files with these names
# and there is nothing else.
round_trip() {
    local msg=$1 n=1 spec
    shift
    parts_of "$msg" || return 1
    for spec in "$@"; do
        n=$((n + 1))
        attachment_is "$msg" "$n" "${spec%%:*}" "${spec#*:}" || return 1
    done
    local count
    count=$(cat "$msg.d/parts/count")
    [ "$count" -eq "$n" ] || say "the message has $count parts, expected $n"
}

# body_is MSG FILE: the decoded text body equals FILE.
body_is() {
    parts_of "$1" || return 1
    same_file "$2" "$1.d/parts/1.bin"
}

# check_message LABEL MSG NATT FILE:NAME...
check_message() {
    local label=$1 msg=$2 natt=$3
    shift 3
    ok "$label: MIME structure intact (CRLF line ends, only real delimiters, $natt attachment(s))" \
        structure_ok "$msg" "$natt"
    ok "$label: openssl cms, openssl smime, certtool and gpgsm all accept it" all_verify "$msg"
    ok "$label: every attachment round-trips byte-identically, with its name" \
        round_trip "$msg" "$@"
}

# ---- three attachments ----------------------------------------------------------
msg="$WORK/three.eml"
ok "three attachments (1, 57 and 100000 bytes): signed" \
    sign_ok "$msg" "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$one" --attach "$line" --attach "$big"
check_message "three attachments" "$msg" 3 "$one:one.bin" "$line:line.bin" "$big:big.bin"

# ---- an empty attachment ----------------------------------------------------------
msg="$WORK/empty.eml"
ok "empty attachment: signed" sign_ok "$msg" "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$empty"
check_message "empty attachment" "$msg" 1 "$empty:empty.txt"

# ---- every byte value --------------------------------------------------------------
msg="$WORK/allbytes.eml"
ok "binary attachment with every byte value 0..255 (x4099): signed" \
    sign_ok "$msg" "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$allbytes"
check_message "every byte value" "$msg" 1 "$allbytes:allbytes.bin"

# ---- delimiter-like text, in an attachment and in the body ------------------------------
msg="$WORK/tricky.eml"
ok "text attachment and --body-file with delimiter-like, '.', 'From ' lines and mixed line ends: signed" \
    sign_ok "$msg" --from scanner@example.org --to office@example.org --subject 'Tricky text' \
    --body-file "$body" "${SIGNER_ARGS[@]}" --attach "$tricky" --attach-type text/plain
check_message "tricky text" "$msg" 1 "$tricky:tricky.txt"
ok "tricky text: the body comes back as sent (line ends made CRLF, bare CR kept)" \
    body_is "$msg" "$canonical_body"

# ---- everything in one message ---------------------------------------------------------
msg="$WORK/all.eml"
ok "five attachments (tricky text, empty, every byte, 1 byte, 100000 bytes) and the tricky body: signed" \
    sign_ok "$msg" --from scanner@example.org --to office@example.org --cc archive@example.org \
    --subject 'Everything' --body-file "$body" "${SIGNER_ARGS[@]}" \
    --attach "$tricky" --attach "$empty" --attach "$allbytes" --attach "$one" --attach "$big"
check_message "everything" "$msg" 5 "$tricky:tricky.txt" "$empty:empty.txt" \
    "$allbytes:allbytes.bin" "$one:one.bin" "$big:big.bin"
ok "everything: the body comes back as sent (line ends made CRLF, bare CR kept)" \
    body_is "$msg" "$canonical_body"
# ---- standard output -----------------------------------------------------------------
msg="$WORK/stdout.eml"
ok "no -o: the message goes to standard output (exit 0, nothing else there)" \
    eval '"$SMIMESTREAM" sign "${STD_ARGS[@]}" "${SIGNER_ARGS[@]}" --attach "$big" >"$msg" 2>"$msg.err" && [ ! -s "$msg.err" ] || { cat "$msg.err" >&2; say "failed or wrote to stderr"; }'
check_message "standard output" "$msg" 1 "$big:big.bin"

# RFC 5322 2.1.1: lines SHOULD be at most 78 characters; base64 and
# quoted-printable lines are 76, so only a header can be longer.
ok "everything: no line of the message (headers included) is longer than 78 characters" \
    "$PYTHON" "$MIMETOOL" check-lines "$WORK/all.eml" 78

done_testing
