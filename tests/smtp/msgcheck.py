#!/usr/bin/python3
"""Check a message the SMTP tests' server stored: verify its signature with
real verifiers and describe what it contains.

  msgcheck.py MSG --ca CA.pem [--text] [--gpgsm-home DIR] [--certtool]

Runs `openssl cms -verify` (always), and unless --text also splits the
signed entity out byte-exact and checks that openssl returned exactly it,
then runs `certtool --p7-verify` (--certtool) and gpgsm (--gpgsm-home; the
home is set up on first use to trust CA).  These three hash the exact bytes
that were sent.

--text is for copies whose CRLF line ends were turned into LF on the way
(Postfix's Maildir delivery does that): openssl's default (text) mode puts
the content back into canonical CRLF form before hashing, so the signature
still verifies; byte-exact checks make no sense there and are skipped.

Prints, on stdout, one line per part of the verified multipart/mixed:
  part N TYPE NAME SIZE SHA256      (decoded payload; NAME "-" when none)
then "partial 1" when a smimestream partial-message notice is present,
"notice <first line>" for it, and "ok" when every verifier accepted.
Exits 0 when every verifier accepted, 1 otherwise (reasons on stderr).
"""
import argparse
import email
import email.parser
import email.policy
import hashlib
import os
import re
import subprocess
import sys
import tempfile


def split_signed(raw):
    """(entity, der) of a multipart/signed message, byte-exact."""
    end = raw.find(b"\r\n\r\n")
    sep = b"\r\n"
    if end < 0 or (raw.find(b"\n\n") >= 0 and raw.find(b"\n\n") < end):
        end, sep = raw.find(b"\n\n"), b"\n"
    hdr = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        raw[: end + 2 * len(sep)])
    if hdr.get_content_type() != "multipart/signed":
        raise ValueError("not multipart/signed but %s" % hdr.get_content_type())
    boundary = hdr.get_param("boundary").encode()
    delim = sep + b"--" + boundary
    first = raw.find(b"--" + boundary + sep, end)
    if first < 0:
        raise ValueError("no first boundary")
    start = first + len(boundary) + 2 + len(sep)
    second = raw.find(delim, start)
    if second < 0:
        raise ValueError("no second boundary")
    entity = raw[start:second]
    rest = raw[second + len(delim) + len(sep):]
    part = email.message_from_bytes(rest.split(delim)[0], policy=email.policy.compat32)
    return entity, part.get_payload(decode=True)


def run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def gpgsm_home(home, ca):
    if os.path.exists(os.path.join(home, ".ready")):
        return
    os.makedirs(home, mode=0o700, exist_ok=True)
    fpr = run(["openssl", "x509", "-in", ca, "-noout", "-fingerprint", "-sha1"])
    fpr = fpr.stdout.decode().strip().split("=", 1)[1]
    with open(os.path.join(home, "trustlist.txt"), "w") as f:
        f.write("%s S relax\n" % fpr)
    with open(os.path.join(home, "gpgsm.conf"), "w") as f:
        f.write("disable-crl-checks\ndisable-dirmngr\n")
    r = run(["gpgsm", "--batch", "--import", ca], env=dict(os.environ, GNUPGHOME=home))
    if r.returncode != 0:
        raise RuntimeError("gpgsm --import failed: %s" % r.stderr.decode())
    open(os.path.join(home, ".ready"), "w").close()


def describe(content):
    msg = email.message_from_bytes(content, policy=email.policy.compat32)
    parts = msg.get_payload() if msg.is_multipart() else [msg]
    partial = None
    for i, p in enumerate(parts, 1):
        data = p.get_payload(decode=True) or b""
        name = p.get_filename() or "-"
        print("part %d %s %s %d %s" % (i, p.get_content_type(), re.sub(r"\s", "_", name),
                                       len(data), hashlib.sha256(data).hexdigest()))
        if name == "PARTIAL-MESSAGE.txt":
            partial = data.decode("utf-8", "replace")
    if partial is not None:
        print("partial 1")
        print("notice " + partial.splitlines()[0])
        for line in partial.splitlines()[1:]:
            if line.strip():
                print("notice " + line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("msg")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--text", action="store_true")
    ap.add_argument("--gpgsm-home")
    ap.add_argument("--certtool", action="store_true")
    a = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        content = os.path.join(tmp, "content")
        r = run(["openssl", "cms", "-verify", "-in", a.msg, "-CAfile", a.ca, "-out", content],
                env=dict(os.environ, OPENSSL_CONF="/dev/null"))
        if r.returncode != 0 or b"Verification successful" not in r.stderr:
            sys.stderr.write("openssl cms -verify rejected %s: %s\n" % (a.msg, r.stderr.decode()))
            return 1
        with open(content, "rb") as f:
            verified = f.read()
        if not a.text:
            with open(a.msg, "rb") as f:
                entity, der = split_signed(f.read())
            if entity != verified:
                sys.stderr.write("openssl returned content that is not the signed entity\n")
                ok = False
            ent, sig = os.path.join(tmp, "entity"), os.path.join(tmp, "sig.der")
            with open(ent, "wb") as f:
                f.write(entity)
            with open(sig, "wb") as f:
                f.write(der)
            if a.certtool:
                r = run(["certtool", "--p7-verify", "--inder", "--infile", sig, "--load-data",
                         ent, "--load-ca-certificate", a.ca])
                if r.returncode != 0 or b"Signature status: ok" not in r.stdout + r.stderr:
                    sys.stderr.write("certtool rejected: %s\n" % (r.stdout + r.stderr).decode())
                    ok = False
            if a.gpgsm_home:
                gpgsm_home(a.gpgsm_home, a.ca)
                r = run(["gpgsm", "--batch", "--status-fd", "1", "--verify", sig, ent],
                        env=dict(os.environ, GNUPGHOME=a.gpgsm_home))
                if r.returncode != 0 or b"[GNUPG:] GOODSIG" not in r.stdout:
                    sys.stderr.write("gpgsm rejected: %s %s\n" % (r.stdout.decode(),
                                                                  r.stderr.decode()))
                    ok = False
        describe(verified)
    if ok:
        print("ok")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
