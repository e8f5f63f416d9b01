#!/usr/bin/env bash
# Install (or upgrade) the kiosk gateway as a systemd service on Raspberry Pi OS / Debian 12.
#
#   sudo deploy/install.sh [--gateway-id ID] [--kiosk-ui] [--dry-run] [--root DIR] [WHEEL]
#
# Run from a checkout (or an unpacked release holding deploy/ and device_profiles/). It installs
# the package from the checkout, or from WHEEL when given, into a venv in /opt/kiosk-gateway,
# creates the `kiosk` system user (groups dialout and bluetooth), writes
# /etc/kiosk-gateway/gateway.toml from deploy/gateway.example.toml when there is none (an existing
# configuration is never touched), makes the gateway's keys in /var/lib/kiosk-gateway when there
# are none, installs the unit and starts it. Running it again is safe: it upgrades the package and
# the unit and restarts a running gateway; configuration and keys stay.
#
#   --gateway-id ID  the id written into a new gateway.toml (default: the short host name)
#   --kiosk-ui       also the kiosk's screen: cage and chromium from Debian, the kiosk-ui user and
#                    kiosk-ui.service (the gateway's page full screen on tty1; not for a gateway
#                    without a screen)
#   --dry-run        print every step, change nothing
#   --root DIR       stage the files under DIR instead of / (an image being built, the tests); what
#                    acts on the running system (apt-get, useradd, chown, the venv and pip,
#                    kiosk-gateway init, systemctl) is printed, not run
set -euo pipefail

PREFIX=/opt/kiosk-gateway
CONF_DIR=/etc/kiosk-gateway
DATA_DIR=/var/lib/kiosk-gateway
UNIT_DIR=/etc/systemd/system
UNIT=kiosk-gateway.service
USER_NAME=kiosk
UI_USER=kiosk-ui
SIGNING_KEY=gateway-signing.pem # gateway/keys.py SIGNING_KEY_FILE

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=""
DRY_RUN=0
KIOSK_UI=0
GATEWAY_ID=""
PACKAGE=""

usage() {
    sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --kiosk-ui) KIOSK_UI=1 ;;
        --root)
            (($# >= 2)) || usage 2
            ROOT=${2%/}
            shift
            ;;
        --root=*) ROOT=${1#--root=} && ROOT=${ROOT%/} ;;
        --gateway-id)
            (($# >= 2)) || usage 2
            GATEWAY_ID=$2
            shift
            ;;
        --gateway-id=*) GATEWAY_ID=${1#--gateway-id=} ;;
        -h | --help) usage 0 ;;
        -*)
            echo "install.sh: unknown option $1" >&2
            usage 2
            ;;
        *)
            [[ -z $PACKAGE ]] || usage 2
            PACKAGE=$1
            ;;
    esac
    shift
done

die() {
    echo "install.sh: $*" >&2
    exit 1
}

say() { echo "==> $*"; }

# A file step under $ROOT: done, or printed with --dry-run.
run() {
    if ((DRY_RUN)); then
        echo "would run: $*"
    else
        "$@"
    fi
}

# A step on the running system: printed with --dry-run or --root, else done.
system() {
    if ((DRY_RUN)) || [[ -n $ROOT ]]; then
        echo "would run: $*"
    else
        "$@"
    fi
}

# True when the running system is the target (not --root), so its users and units can be asked.
live() { [[ -z $ROOT ]]; }

[[ -f $SRC/pyproject.toml && -d $SRC/device_profiles ]] || die "$SRC is not a kiosk-edge checkout"
if [[ -n $PACKAGE ]]; then
    [[ -f $PACKAGE ]] || die "no wheel at $PACKAGE"
    PACKAGE=$(cd "$(dirname "$PACKAGE")" && pwd)/$(basename "$PACKAGE")
else
    PACKAGE=$SRC
fi
GATEWAY_ID=${GATEWAY_ID:-$(hostname -s)}
[[ $GATEWAY_ID =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die "gateway id '$GATEWAY_ID': 1-64 of A-Z a-z 0-9 _ . -"
if live && ! ((DRY_RUN)) && ((EUID != 0)); then
    die "run as root (sudo), or with --dry-run"
fi
if [[ -n $ROOT ]]; then
    run mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" 2>/dev/null && pwd || echo "$ROOT")
fi

# Debian packages, each only when missing; the package lists are refreshed once, first.
apt_updated=0
apt_install() {
    if ((!apt_updated)); then
        system apt-get update
        apt_updated=1
    fi
    system apt-get install -y "$@"
}

say "Python venv support"
if live && python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "python3-venv present"
else
    apt_install python3-venv
fi

say "user $USER_NAME (groups dialout, bluetooth)"
if live && getent group bluetooth >/dev/null; then
    echo "group bluetooth present"
else
    # BlueZ creates it; made here first so the unit's SupplementaryGroups= resolves without it.
    system groupadd --system bluetooth
fi
if live && id -u "$USER_NAME" >/dev/null 2>&1; then
    system usermod --append --groups dialout,bluetooth "$USER_NAME"
else
    system useradd --system --user-group --groups dialout,bluetooth --home-dir "$DATA_DIR" \
        --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
fi

say "package into $PREFIX (from $PACKAGE)"
if live && [[ -x $PREFIX/bin/python ]]; then
    echo "venv present"
else
    system python3 -m venv "$PREFIX"
fi
system "$PREFIX/bin/pip" install --quiet "$PACKAGE"
# The same version again (a checkout between releases) is still new code: reinstall the package.
system "$PREFIX/bin/pip" install --quiet --force-reinstall --no-deps "$PACKAGE"
run install -d -m 0755 "$ROOT$PREFIX/device_profiles"
# Shipped profiles are refreshed; a profile added on this gateway (another file name) stays.
run cp -R "$SRC/device_profiles/." "$ROOT$PREFIX/device_profiles/"
run install -m 0644 "$SRC/README.md" "$ROOT$PREFIX/README.md"
run install -m 0644 "$SRC/deploy/gateway.example.toml" "$ROOT$PREFIX/gateway.example.toml"

say "configuration $CONF_DIR/gateway.toml"
run install -d -m 0750 "$ROOT$CONF_DIR"
system chown "root:$USER_NAME" "$CONF_DIR"
if [[ -e $ROOT$CONF_DIR/gateway.toml ]]; then
    echo "kept: $ROOT$CONF_DIR/gateway.toml exists"
elif ((DRY_RUN)); then
    echo "would write: $ROOT$CONF_DIR/gateway.toml from deploy/gateway.example.toml (gateway_id = \"$GATEWAY_ID\")"
else
    new_config=$(mktemp)
    trap 'rm -f "$new_config"' EXIT
    sed "s/^gateway_id = .*/gateway_id = \"$GATEWAY_ID\"/" "$SRC/deploy/gateway.example.toml" >"$new_config"
    install -m 0640 "$new_config" "$ROOT$CONF_DIR/gateway.toml"
    echo "wrote $ROOT$CONF_DIR/gateway.toml (gateway_id = \"$GATEWAY_ID\"): set its serial ports and broker"
fi
system chown "root:$USER_NAME" "$CONF_DIR/gateway.toml"

say "keys in $DATA_DIR"
run install -d -m 0700 "$ROOT$DATA_DIR"
system chown "$USER_NAME:$USER_NAME" "$DATA_DIR"
if [[ -e $ROOT$DATA_DIR/$SIGNING_KEY ]]; then
    echo "kept: keys exist"
else
    system runuser -u "$USER_NAME" -- "$PREFIX/bin/kiosk-gateway" init --data-dir "$DATA_DIR"
fi

say "systemd unit $UNIT"
# Installs and starts (or restarts, to load the new package and unit) one unit.
enable_unit() {
    local unit=$1 was_active=0
    run install -d -m 0755 "$ROOT$UNIT_DIR"
    run install -m 0644 "$SRC/deploy/systemd/$unit" "$ROOT$UNIT_DIR/$unit"
    if live && systemctl is-active --quiet "$unit" 2>/dev/null; then
        was_active=1
    fi
    system systemctl daemon-reload
    system systemctl enable --now "$unit"
    if ((was_active)); then
        system systemctl restart "$unit"
    fi
}
enable_unit "$UNIT"

if ((KIOSK_UI)); then
    say "kiosk screen: kiosk-ui.service (cage, chromium, user $UI_USER)"
    if live && [[ -x /usr/bin/cage && -x /usr/bin/chromium ]]; then
        echo "cage and chromium present"
    else
        apt_install cage chromium
    fi
    if live && id -u "$UI_USER" >/dev/null 2>&1; then
        echo "user $UI_USER present"
    else
        system useradd --system --user-group --home-dir "/var/lib/$UI_USER" --no-create-home \
            --shell /usr/sbin/nologin "$UI_USER"
    fi
    enable_unit kiosk-ui.service
fi

if ((DRY_RUN)); then
    echo && echo "Dry run: nothing was changed."
elif [[ -n $ROOT ]]; then
    echo && echo "Staged under $ROOT; the steps printed above are for the target system."
fi
cat <<EOF

Next, on the gateway:
  - enrol this gateway with the bridge: send $DATA_DIR/gateway-signing.pub.pem and the id
    "$GATEWAY_ID" to the bridge operator (kiosk-bridge enrol $GATEWAY_ID --public-key ...)
  - edit $CONF_DIR/gateway.toml (serial ports, broker), then: systemctl restart kiosk-gateway
  - check it: systemctl status kiosk-gateway; journalctl -u kiosk-gateway -f
EOF
