#!/bin/bash
# A private Postfix instance on loopback for the SMTP transport tests.
#
#   postfix.sh start DIR CERT KEY USER PASSWORD   prints "SMTP_PORT SUBMISSION_PORT"
#   postfix.sh stop DIR
#
# Needs root (Postfix drops privileges to its own users).  Everything lives
# in DIR: configuration, queue, data directory, log, and the Maildir that
# every recipient @example.org is delivered to (DIR/maildir/all/new/).
#
# SMTP_PORT: plain SMTP, relays for 127.0.0.0/8 without authentication.
# SUBMISSION_PORT: STARTTLS required (smtpd_tls_security_level=encrypt),
# AUTH PLAIN/LOGIN through Cyrus SASL with a sasldb holding USER/PASSWORD,
# and only authenticated clients may send.  (Debian's Postfix reads the SASL
# application file from $config_directory/sasl/smtpd.conf, whatever
# cyrus_sasl_config_path says.)
set -euo pipefail

cmd=$1 dir=$2

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

if [ "$cmd" = stop ]; then
    [ -f "$dir/conf/main.cf" ] && postfix -c "$dir/conf" stop >/dev/null 2>&1 || true
    # master may take a moment to go; wait for its pid file to disappear.
    for _ in $(seq 1 50); do
        [ -s "$dir/queue/pid/master.pid" ] || break
        kill -0 "$(tr -d ' ' <"$dir/queue/pid/master.pid")" 2>/dev/null || break
        sleep 0.1
    done
    exit 0
fi

[ "$cmd" = start ] || { echo "usage: postfix.sh start|stop DIR ..." >&2; exit 64; }
cert=$3 key=$4 user=$5 password=$6
[ "$(id -u)" -eq 0 ] || { echo "postfix.sh: needs root" >&2; exit 77; }
command -v postfix >/dev/null || { echo "postfix.sh: postfix is not installed" >&2; exit 77; }

mkdir -p "$dir"/{conf/sasl,queue,data,maildir}
chmod 755 "$dir" "$dir/conf" "$dir/conf/sasl" "$dir/maildir"
chown postfix "$dir/data"
chown nobody:nogroup "$dir/maildir"
install -m 644 "$cert" "$dir/conf/server.pem"
install -m 600 "$key" "$dir/conf/server.key"
smtp_port=$(free_port)
sub_port=$(free_port)
while [ "$sub_port" = "$smtp_port" ]; do sub_port=$(free_port); done

cat >"$dir/conf/sasl/smtpd.conf" <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: $dir/conf/sasl/sasldb2
mech_list: PLAIN LOGIN
EOF
printf '%s' "$password" | saslpasswd2 -p -c -f "$dir/conf/sasl/sasldb2" -u smtp.test "$user"
chown postfix "$dir/conf/sasl/sasldb2"
chmod 600 "$dir/conf/sasl/sasldb2"

cat >"$dir/conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
myhostname = smtp.test
mydomain = test
myorigin = test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
biff = no
message_size_limit = 209715200
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
virtual_mailbox_domains = example.org
virtual_mailbox_base = $dir/maildir
virtual_mailbox_maps = static:all/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_mailbox_limit = 0
smtpd_tls_cert_file = $dir/conf/server.pem
smtpd_tls_key_file = $dir/conf/server.key
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = $dir/conf/sasl
smtpd_sasl_local_domain = smtp.test
smtpd_sasl_auth_enable = no
EOF

cat >"$dir/conf/master.cf" <<EOF
127.0.0.1:$smtp_port inet n - n - - smtpd
127.0.0.1:$sub_port inet n - n - - smtpd
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF

postfix -c "$dir/conf" check >"$dir/check.log" 2>&1 || { cat "$dir/check.log" >&2; exit 1; }
postfix -c "$dir/conf" start >"$dir/start.log" 2>&1 || { cat "$dir/start.log" >&2; exit 1; }
# Wait until both ports accept connections.
for port in "$smtp_port" "$sub_port"; do
    for i in $(seq 1 100); do
        /usr/bin/python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2).close()" 2>/dev/null && break
        [ "$i" -eq 100 ] && { echo "postfix.sh: port $port does not answer" >&2; cat "$dir/maillog" >&2 || true; exit 1; }
        sleep 0.1
    done
done
echo "$smtp_port $sub_port"
