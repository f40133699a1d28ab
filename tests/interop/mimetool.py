#!/usr/bin/python3
"""Byte-exact helpers for the smimestream interop tests.

  mimetool.py split MSG ENTITY SIG
      Write the signed entity (byte-exact) and the DER signature of a
      multipart/signed message.
  mimetool.py parts MIME OUTDIR
      Parse a multipart/mixed entity (as written by `openssl cms -verify -out`
      or split out by `split`) and write, for part number N (1-based):
      OUTDIR/N.bin (decoded payload), OUTDIR/N.type, OUTDIR/N.name (decoded
      file name, if any); OUTDIR/count holds the number of parts.
  mimetool.py check-lines MSG [MAX]
      Every line ends in CRLF (no bare CR or LF) and is at most MAX
      (default 78) characters long without the CRLF.
  mimetool.py delims MSG
      Every line of MSG that starts with "--" is a delimiter of the outer or
      the inner boundary; print the number of inner parts.
  mimetool.py headers MSG
      Print the decoded Subject and the decoded file name of every
      attachment, one per line, as "subject: ..." and "filename: ...".
  mimetool.py tamper MSG OUT [PART]
      Copy MSG to OUT with one base64 letter in the middle of attachment
      PART (default 1; counted among the base64 parts of the signed entity)
      changed to another valid base64 letter (A<->B and so on).
  mimetool.py sigint-twice PID
      Make PID receive two SIGINTs, one right after the other (see below).
  mimetool.py fionread FIFO
      Print the number of bytes waiting in FIFO (opened without blocking,
      never read).
"""
import email
import email.parser
import email.utils
import email.policy
import fcntl
import os
import re
import struct
import sys
import termios
import base64


def die(msg):
    sys.stderr.write("mimetool: %s\n" % msg)
    sys.exit(2)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def outer_boundary(msg):
    """The boundary of the top-level multipart/signed, from its header."""
    end = msg.find(b"\r\n\r\n")
    if end < 0:
        die("no end of header")
    hdr = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        msg[: end + 4])
    ctype = hdr.get_content_type()
    if ctype != "multipart/signed":
        die("top-level type is %s, not multipart/signed" % ctype)
    b = hdr.get_param("boundary")
    if not b:
        die("no boundary parameter")
    return b.encode("ascii"), end + 4


def split(msg):
    """Return (entity, signature DER, signature part headers)."""
    b, body_start = outer_boundary(msg)
    first = b"--" + b + b"\r\n"
    # The first delimiter: at the start of the body or after a CRLF.
    if msg[body_start:].startswith(first):
        start = body_start + len(first)
    else:
        i = msg.find(b"\r\n" + first, body_start - 2)
        if i < 0:
            die("no first delimiter --%s" % b.decode())
        start = i + 2 + len(first)
    nxt = msg.find(b"\r\n--" + b, start)
    if nxt < 0:
        die("no second delimiter")
    entity = msg[start:nxt]
    rest = msg[nxt + 4 + len(b):]
    if not rest.startswith(b"\r\n"):
        die("second delimiter is not followed by CRLF")
    rest = rest[2:]
    end = rest.find(b"\r\n--" + b + b"--")
    if end < 0:
        die("no close delimiter")
    part = rest[:end]
    hend = part.find(b"\r\n\r\n")
    if hend < 0:
        die("signature part has no header end")
    phdr = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        part[: hend + 4])
    if phdr.get_content_type() not in ("application/pkcs7-signature",
                                       "application/x-pkcs7-signature"):
        die("second part is %s" % phdr.get_content_type())
    if (phdr.get("Content-Transfer-Encoding") or "").strip().lower() != "base64":
        die("signature part is not base64")
    sig = base64.b64decode(re.sub(rb"\s+", b"", part[hend + 4:]), validate=True)
    return entity, sig, phdr


def cmd_split(args):
    msg = read(args[0])
    entity, sig, _ = split(msg)
    with open(args[1], "wb") as f:
        f.write(entity)
    with open(args[2], "wb") as f:
        f.write(sig)


def cmd_parts(args):
    data = read(args[0])
    out = args[1]
    os.makedirs(out, exist_ok=True)
    m = email.message_from_bytes(data, policy=email.policy.default)
    if m.get_content_type() != "multipart/mixed":
        die("entity is %s, not multipart/mixed" % m.get_content_type())
    if m.defects:
        die("defects in the entity: %r" % m.defects)
    n = 0
    for part in m.iter_parts():
        n += 1
        if part.defects:
            die("defects in part %d: %r" % (n, part.defects))
        payload = part.get_payload(decode=True)
        if payload is None:
            die("part %d has no payload" % n)
        with open(os.path.join(out, "%d.bin" % n), "wb") as f:
            f.write(payload)
        with open(os.path.join(out, "%d.type" % n), "w") as f:
            f.write(part.get_content_type() + "\n")
        name = part.get_filename()
        if name is not None:
            with open(os.path.join(out, "%d.name" % n), "w", encoding="utf-8") as f:
                f.write(name)
    with open(os.path.join(out, "count"), "w") as f:
        f.write("%d\n" % n)


def cmd_check_lines(args):
    msg = read(args[0])
    limit = int(args[1]) if len(args) > 1 else 78
    if not msg.endswith(b"\r\n"):
        die("message does not end with CRLF")
    bad = 0
    for no, line in enumerate(msg[:-2].split(b"\r\n"), 1):
        if b"\r" in line or b"\n" in line:
            sys.stderr.write("line %d has a bare CR or LF: %r\n" % (no, line[:100]))
            bad += 1
        if len(line) > limit:
            sys.stderr.write("line %d is %d characters long: %r\n" % (no, len(line), line[:100]))
            bad += 1
        if bad > 10:
            break
    sys.exit(1 if bad else 0)


def cmd_delims(args):
    msg = read(args[0])
    ob, _ = outer_boundary(msg)
    entity, _, _ = split(msg)
    m = re.match(rb'Content-Type: multipart/mixed;(?:\r\n)? ?boundary="([^"]+)"\r\n', entity)
    if not m:
        die("the signed entity does not start with a multipart/mixed Content-Type")
    ib = m.group(1)
    outer = {b"--" + ob, b"--" + ob + b"--"}
    inner_open, inner_close = b"--" + ib, b"--" + ib + b"--"
    n_outer = n_inner = n_close = 0
    bad = 0
    for no, line in enumerate(msg.split(b"\r\n"), 1):
        if not line.startswith(b"--"):
            continue
        if line in outer:
            n_outer += 1
        elif line == inner_open:
            n_inner += 1
        elif line == inner_close:
            n_close += 1
        else:
            sys.stderr.write("line %d starts with -- but is no delimiter: %r\n" % (no, line[:80]))
            bad += 1
    if n_outer != 3 or n_close != 1:
        sys.stderr.write("found %d outer delimiters (want 3) and %d inner close delimiters "
                         "(want 1)\n" % (n_outer, n_close))
        bad += 1
    print(n_inner)
    sys.exit(1 if bad else 0)


def cmd_headers(args):
    msg = read(args[0])
    m = email.message_from_bytes(msg, policy=email.policy.default)
    out = sys.stdout.buffer
    out.write(("subject: %s\n" % m["subject"]).encode("utf-8"))
    for part in m.walk():
        if part.is_multipart():
            continue
        name = part.get_filename()
        if name is not None:
            out.write(("filename: %s\n" % name).encode("utf-8"))
        pname = part.get_param("name")
        if pname is not None:
            out.write(("name: %s\n" % email.utils.collapse_rfc2231_value(pname)).encode("utf-8"))


B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def cmd_tamper(args):
    msg = read(args[0])
    want = int(args[2]) if len(args) > 2 else 1
    entity, _, _ = split(msg)
    estart = msg.find(entity)
    # Find the base64 bodies of the inner multipart/mixed.
    m = re.search(rb'boundary="?([^"\r\n;]+)"?', entity)
    if not m:
        die("no inner boundary")
    ib = m.group(1)
    pos = 0
    seen = 0
    while True:
        i = entity.find(b"\r\n--" + ib + b"\r\n", pos)
        if i < 0:
            die("attachment %d not found" % want)
        hstart = i + 6 + len(ib)
        hend = entity.find(b"\r\n\r\n", hstart)
        hdr = entity[hstart:hend].lower()
        bstart = hend + 4
        bend = entity.find(b"\r\n--" + ib, bstart)
        pos = bend
        if b"content-transfer-encoding: base64" not in hdr or b"attachment" not in hdr:
            continue
        seen += 1
        if seen == want:
            break
    body = entity[bstart:bend]
    if len(body) < 8:
        die("attachment %d is too short to tamper with" % want)
    k = len(body) // 2
    while body[k:k + 1] not in [bytes([c]) for c in B64[:62]]:
        k += 1
    c = body[k]
    idx = B64.index(c)
    new = B64[idx ^ 1]  # A<->B, C<->D, ..., 8<->9: always another letter or digit
    off = estart + bstart + k
    out = bytearray(msg)
    out[off] = new
    with open(args[1], "wb") as f:
        f.write(out)
    sys.stdout.write("changed byte %d from %r to %r\n" % (off, chr(c), chr(new)))


def proc_state(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def cmd_sigint_twice(args):
    """Two SIGINTs that are delivered as two signals, deterministically.

    Standard signals do not queue: a second SIGINT sent while the first is
    still pending is lost, and one sent after the first was taken may come
    too late (finishing a partial message takes about a millisecond).  But
    a process has two pending sets: its own (tgkill) and the shared one
    (kill).  So: stop the process, put one SIGINT in each set, continue it.
    It takes the first, runs the handler with SIGINT blocked, and takes the
    second as soon as the handler returns -- before its main code runs
    again."""
    import ctypes
    import signal
    import time
    pid = int(args[0])
    libc = ctypes.CDLL(None, use_errno=True)
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while proc_state(pid) != "T":
        if time.monotonic() > deadline:
            die("process %d did not stop" % pid)
        time.sleep(0.001)
    if libc.tgkill(pid, pid, signal.SIGINT) != 0:
        die("tgkill: %s" % os.strerror(ctypes.get_errno()))
    os.kill(pid, signal.SIGINT)
    with open("/proc/%d/status" % pid) as f:
        pend = {l.split(":")[0]: int(l.split()[1], 16) for l in f if l.startswith(("SigPnd:", "ShdPnd:"))}
    if not (pend["SigPnd"] & 2 and pend["ShdPnd"] & 2):
        die("expected SIGINT pending twice, got %r" % pend)
    os.kill(pid, signal.SIGCONT)


def cmd_fionread(args):
    fd = os.open(args[0], os.O_RDONLY | os.O_NONBLOCK)
    try:
        buf = fcntl.ioctl(fd, termios.FIONREAD, struct.pack("i", 0))
        print(struct.unpack("i", buf)[0])
    finally:
        os.close(fd)


def main():
    if len(sys.argv) < 2:
        die("usage: see the top of this file")
    cmds = {
        "split": (cmd_split, 3),
        "parts": (cmd_parts, 2),
        "check-lines": (cmd_check_lines, 1),
        "headers": (cmd_headers, 1),
        "delims": (cmd_delims, 1),
        "tamper": (cmd_tamper, 2),
        "fionread": (cmd_fionread, 1),
        "sigint-twice": (cmd_sigint_twice, 1),
    }
    c = cmds.get(sys.argv[1])
    if not c or len(sys.argv) - 2 < c[1]:
        die("bad command line: %r" % sys.argv[1:])
    c[0](sys.argv[2:])


if __name__ == "__main__":
    main()
