#!/bin/bash
# Non-ASCII header text: the Subject as RFC 2047 encoded-words, the file name
# as RFC 2231 parameters; headers stay 7-bit with short lines, and Python's
# email package (policy=email.policy.default) decodes them back exactly.
. "$(dirname "$0")/../lib/lib.sh"

SUBJECT='Überweisung März – 日本語のテキスト 🙂'
NAME='Übersicht März €.pdf'
FROM_NAME='Scanner Büro'

signer_args rsa2048
att="$WORK/input.pdf"
random_file "$att" 40000
msg="$WORK/nonascii.eml"

ok "UTF-8 subject, display name and attachment name: signed (exit 0)" \
    sign_ok "$msg" --from "$FROM_NAME <scanner@example.org>" --to office@example.org \
    --subject "$SUBJECT" --body 'Anbei die Übersicht.' "${SIGNER_ARGS[@]}" \
    --attach "$att" --attach-name "$NAME"

# header_block MSG: the outer header, CRLF removed, folded lines kept apart.
header_block() { sed -n '1,/^\r$/p' "$1" | tr -d '\r' | sed '$d'; }

# field MSG NAME: one header field of the outer header, with its folded lines.
field() {
    header_block "$1" | awk -v n="$2" '
        /^[^ \t]/ { on = (tolower(substr($0, 1, length(n) + 1)) == tolower(n ":")) }
        on { print }'
}

# The raw Subject: only ASCII, made of =?UTF-8?B?...?= (or ?Q?) words.
subject_raw_ok() {
    local raw
    raw=$(field "$1" Subject)
    echo "$raw" >&2
    [ -n "$raw" ] || say "no Subject header" || return 1
    LC_ALL=C grep -q '[^ -~]' <<<"$raw" && { say "the Subject header is not 7-bit printable ASCII"; return 1; }
    grep -Eq '=\?[Uu][Tt][Ff]-8\?[BbQq]\?[^?]+\?=' <<<"$raw" || say "no RFC 2047 encoded-word in the Subject"
}
ok "raw Subject is 7-bit ASCII made of RFC 2047 encoded-words (=?UTF-8?B?...?=)" subject_raw_ok "$msg"

# Every encoded-word is at most 75 characters (RFC 2047 section 2) and
# decodes on its own to whole UTF-8 characters (section 5: no character split
# across two words).
words_ok() {
    "$PYTHON" - "$1" <<'EOF'
import base64, quopri, re, sys
data = open(sys.argv[1], "rb").read()
head = data[:data.index(b"\r\n\r\n")].decode("ascii")
bad = 0
words = re.findall(r"=\?([^?]+)\?([BbQq])\?([^?]*)\?=", head)
if not words:
    print("no encoded-words", file=sys.stderr); sys.exit(1)
for cs, enc, text in words:
    w = "=?%s?%s?%s?=" % (cs, enc, text)
    if len(w) > 75:
        print("encoded-word of %d characters: %s" % (len(w), w), file=sys.stderr); bad += 1
    raw = base64.b64decode(text) if enc in "Bb" else quopri.decodestring(text.replace("_", " "), header=True)
    try:
        raw.decode(cs)
    except UnicodeDecodeError as e:
        print("encoded-word %s does not decode by itself: %s" % (w, e), file=sys.stderr); bad += 1
sys.exit(1 if bad else 0)
EOF
}
ok "each encoded-word is <= 75 characters and holds whole UTF-8 characters" words_ok "$msg"

# The attachment's Content-Type name and Content-Disposition filename: RFC
# 2231 (filename*=UTF-8''... or filename*0*=...), 7-bit.
rfc2231_ok() {
    local d="$1.d" hdr
    split_entity "$1" || return 1
    hdr=$("$PYTHON" - "$d/entity" <<'EOF'
import sys
e = open(sys.argv[1], "rb").read()
i = e.find(b"Content-Disposition: attachment")
s = e.rfind(b"\r\n--", 0, i)
t = e.find(b"\r\n\r\n", i)
sys.stdout.write(e[s + 2:t].decode("ascii", "replace").replace("\r\n", "\n"))
EOF
    ) || return 1
    echo "$hdr" >&2
    LC_ALL=C grep -q '[^ -~]' <<<"$hdr" && { say "the attachment header is not 7-bit printable ASCII"; return 1; }
    grep -Eqi "filename\\*(0\\*)?=utf-8''" <<<"$hdr" || say "no RFC 2231 filename*= parameter" || return 1
    grep -Eqi "name\\*(0\\*)?=utf-8''" <<<"$hdr" || say "no RFC 2231 name*= parameter in Content-Type"
}
ok "attachment name is sent as RFC 2231 parameters (filename*=UTF-8''..., name*=...), 7-bit" rfc2231_ok "$msg"

# lines_ok MSG: the outer header and every header of the signed entity's
# parts use lines of at most 78 characters.
hdr_lines_ok() {
    "$PYTHON" - "$1" <<'EOF'
import re, sys
data = open(sys.argv[1], "rb").read()
bad = 0
# Header blocks: the top one, and each one after a delimiter line.
blocks = [data[:data.index(b"\r\n\r\n")]]
for m in re.finditer(rb"\r\n--=_sms_[0-9a-f]+\r\n", data):
    end = data.find(b"\r\n\r\n", m.end())
    blocks.append(data[m.end():end])
for b in blocks:
    for line in b.split(b"\r\n"):
        if len(line) > 78 and not line.startswith(b"Content-Type: multipart/mixed;"):
            print("header line of %d characters: %r" % (len(line), line), file=sys.stderr)
            bad += 1
sys.exit(1 if bad else 0)
EOF
}
# (The inner "Content-Type: multipart/mixed; boundary=..." line is left to
# shapes.sh, which checks every line of the message.)
ok "the encoded Subject, From and attachment header lines are at most 78 characters" hdr_lines_ok "$msg"

# Python's email package decodes what we meant.
decoded_ok() {
    "$PYTHON" - "$1" "$SUBJECT" "$NAME" "$FROM_NAME" <<'EOF'
import email, email.policy, sys
m = email.message_from_bytes(open(sys.argv[1], "rb").read(), policy=email.policy.default)
want_subject, want_name, want_from = sys.argv[2], sys.argv[3], sys.argv[4]
bad = 0
if str(m["subject"]) != want_subject:
    print("Subject decodes to %r, expected %r" % (str(m["subject"]), want_subject), file=sys.stderr); bad += 1
frm = m["from"].addresses[0]
if frm.display_name != want_from or frm.addr_spec != "scanner@example.org":
    print("From decodes to %r <%s>" % (frm.display_name, frm.addr_spec), file=sys.stderr); bad += 1
atts = [p for p in m.walk() if p.get_content_disposition() == "attachment"
        and p.get_content_type() != "application/pkcs7-signature"]
names = [p.get_filename() for p in atts]
if names != [want_name]:
    print("attachment file names decode to %r, expected %r" % (names, [want_name]), file=sys.stderr); bad += 1
ctn = [p.get_param("name") for p in atts]
ctn = [email.utils.collapse_rfc2231_value(v) if v is not None else None for v in ctn]
if ctn != [want_name]:
    print("Content-Type name parameters decode to %r" % (ctn,), file=sys.stderr); bad += 1
for h in ("subject", "from"):
    if m[h].defects:
        print("%s header defects: %r" % (h, m[h].defects), file=sys.stderr); bad += 1
sys.exit(1 if bad else 0)
EOF
}
for_message() { # LABEL MSG SUBJECT NAME
    local label=$1 m=$2
    SUBJECT=$3 NAME=$4
    ok "$label: python email (policy.default) decodes Subject, From display name and file name to the exact strings" \
        decoded_ok "$m"
    ok "$label: openssl cms -verify accepts it" verify_openssl_cms "$m"
    ok "$label: gpgsm --verify gives GOODSIG" verify_gpgsm "$m"
    ok "$label: the attachment openssl returned is byte-identical, with its name" \
        attachment_is "$m" 2 "$att" "$NAME"
}
for_message "short" "$msg" "$SUBJECT" "$NAME"

# Long values: several encoded-words folded over lines, and an RFC 2231
# parameter that needs continuations (filename*0*=, filename*1*=, ...).
LONG_SUBJECT="$SUBJECT – $SUBJECT – $SUBJECT – Ende"
LONG_NAME='Sehr langer Dateiname für die Übersicht aller Überweisungen im März – 日本語のテキスト – €€€ 🙂.pdf'
msg2="$WORK/long.eml"
ok "long: a 3x subject and a long UTF-8 file name: signed (exit 0)" \
    sign_ok "$msg2" --from "$FROM_NAME <scanner@example.org>" --to office@example.org \
    --subject "$LONG_SUBJECT" "${SIGNER_ARGS[@]}" --attach "$att" --attach-name "$LONG_NAME"
ok "long: raw Subject is 7-bit ASCII made of RFC 2047 encoded-words" subject_raw_ok "$msg2"
ok "long: each encoded-word is <= 75 characters and holds whole UTF-8 characters" words_ok "$msg2"
ok "long: attachment name is sent as RFC 2231 parameters, 7-bit" rfc2231_ok "$msg2"
ok "long: header lines are at most 78 characters" hdr_lines_ok "$msg2"
for_message "long" "$msg2" "$LONG_SUBJECT" "$LONG_NAME"
SUBJECT='Überweisung März – 日本語のテキスト 🙂'

# ---- address lists and extra headers ---------------------------------------------------
msg3="$WORK/recipients.eml"
ok "recipients: several To/Cc with UTF-8 display names and a UTF-8 --header: signed (exit 0)" \
    sign_ok "$msg3" --from "$FROM_NAME <scanner@example.org>" \
    --to 'Zoë Öhlin <zoe@example.org>' \
    --to 'Jürgen Müller-Lüdenscheidt <juergen.mueller-luedenscheidt@example.org>' \
    --to plain@example.org --cc 'Ærøskøbing Kontor <kontor@example.dk>' \
    --header 'X-Scanner: Büro 3 – Flur' --subject "$SUBJECT" "${SIGNER_ARGS[@]}"
recipients_ok() {
    "$PYTHON" - "$1" <<'EOF2'
import email, email.policy, sys
m = email.message_from_bytes(open(sys.argv[1], "rb").read(), policy=email.policy.default)
got = {h: [(a.display_name, a.addr_spec) for a in m[h].addresses] for h in ("to", "cc")}
want = {"to": [("Zoë Öhlin", "zoe@example.org"),
               ("Jürgen Müller-Lüdenscheidt", "juergen.mueller-luedenscheidt@example.org"),
               ("", "plain@example.org")],
        "cc": [("Ærøskøbing Kontor", "kontor@example.dk")]}
bad = 0
if got != want:
    print("addresses decode to %r,\nexpected %r" % (got, want), file=sys.stderr); bad += 1
if str(m["x-scanner"]) != "Büro 3 – Flur":
    print("X-Scanner decodes to %r" % str(m["x-scanner"]), file=sys.stderr); bad += 1
sys.exit(1 if bad else 0)
EOF2
}
ok "recipients: python email decodes every To/Cc display name and address, and the X-Scanner header" \
    recipients_ok "$msg3"
# An address list can be folded before each "<addr>" (and after each comma),
# so no line needs to be longer than 78 even with long display names.
ok "recipients: header lines are at most 78 characters (To/Cc folded where needed)" hdr_lines_ok "$msg3"
ok "recipients: openssl cms -verify accepts it" verify_openssl_cms "$msg3"

# In the C locale the command line cannot be decoded as UTF-8 text.  The
# subject must then be refused with exit 64, or taken as the UTF-8 it is;
# it must never be mangled into something else.
c_locale_ok() {
    local out="$WORK/c-locale.eml"
    LC_ALL=C LANG='' sign "$out" --from scanner@example.org --to office@example.org \
        --subject "$SUBJECT" "${SIGNER_ARGS[@]}"
    cat "$out.err" >&2
    case $SIGN_RC in
    64) [ ! -e "$out" ] || say "exit 64 but $out was written" ;;
    0) "$PYTHON" - "$out" "$SUBJECT" <<'EOF'
import email, email.policy, sys
m = email.message_from_bytes(open(sys.argv[1], "rb").read(), policy=email.policy.default)
if str(m["subject"]) != sys.argv[2]:
    print("Subject became %r" % str(m["subject"]), file=sys.stderr); sys.exit(1)
EOF
        ;;
    *) say "exit code $SIGN_RC" ;;
    esac
}
ok "LC_ALL=C: a UTF-8 --subject is refused (64) or kept exactly, never mangled" c_locale_ok

done_testing
