# Sourced by check.sh and demo.sh: install the Debian packages that are
# missing (only when running as root; otherwise say what to install).
SMS_DEPS=(meson ninja-build pkg-config gcc libc6-dev libgnutls28-dev gnutls-bin libtasn1-6-dev
    libtasn1-bin libp11-kit-dev p11-kit softhsm2 opensc opensc-pkcs11 libcurl4-gnutls-dev
    libglib2.0-dev libdbus-1-dev dbus-daemon openssl gpgsm python3 python3-aiosmtpd
    valgrind time util-linux bc)

sms_install_deps() {
    local missing=() p
    for p in "${SMS_DEPS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages: ${missing[*]}" >&2
        echo "install them with: sudo apt-get install ${missing[*]}" >&2
        return 1
    fi
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || true
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
