#!/bin/sh
# Install kick-monitor as a systemd service (Debian 12+). Idempotent: run it again to
# upgrade; it never overwrites /etc/kick-monitor/kick-monitor.env once it exists.
#
#   sudo scripts/install.sh                 # all shards in one unit: kick-monitor.service
#   sudo scripts/install.sh --shards 4      # one unit per shard: kick-monitor@0..3 + kick-monitor.target
#   scripts/install.sh --dry-run            # print every action, change nothing (no root needed)
#
# Options:
#   --dry-run        print the actions without doing them
#   --shards N       set up the per-shard template units for N shards (writes
#                    /etc/kick-monitor/shard-<i>.env: KICK_MONITOR_SHARD_COUNT=N and metrics port 94<ii>)
#   --enable         also `systemctl enable --now` the service (or the target and its shards)
#   --prefix DIR     the virtualenv to install into (default /opt/kick-monitor)
#   --source SPEC    what pip installs (default: this checkout)
#   --extras LIST    optional parts to install with it, comma-separated: `supervisor` (supervisord
#                    from PyPI; Debian's `apt-get install supervisor` works as well), `embedded`
#                    (a PostgreSQL in the data dir when KICK_MONITOR_DATABASE_URL is unset; its
#                    server never gets security updates: prefer your own PostgreSQL)
#   --destdir DIR    stage files under DIR (packaging): no user, no ownership, no venv, no systemctl
#   --client-secret-from FILE      store the Kick client secret (the content of FILE) as the
#   --database-password-from FILE  systemd credential client_secret / database_password
#   --encrypt        store credentials encrypted (systemd-creds: host key or TPM2) in
#                    /etc/credstore.encrypted, plus a unit drop-in that loads them so
#   --no-prompt      never ask; without --*-from flags no credential is created
#
# What it does: creates the system user kick-monitor, /var/lib/kick-monitor (0750),
# /etc/kick-monitor/kick-monitor.env from etc/kick-monitor.env.example (0600, root), the
# secrets as systemd credentials in /etc/credstore (0600, root; asked for on a terminal,
# or from the --*-from files; never echoed, never in the env file), a virtualenv with the
# package, and the units in /etc/systemd/system; then daemon-reload.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
USER_NAME=kick-monitor
PREFIX=/opt/kick-monitor
SOURCE=$REPO
EXTRAS=
DESTDIR=
DRY_RUN=0
SHARDS=0
ENABLE=0
ENCRYPT=0
PROMPT=1
CLIENT_SECRET_FROM=
DATABASE_PASSWORD_FROM=
PYTHON=${PYTHON:-python3}

die() { echo "install.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --enable) ENABLE=1 ;;
        --shards) [ $# -ge 2 ] || die "--shards needs a number"; SHARDS=$2; shift ;;
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift ;;
        --source) [ $# -ge 2 ] || die "--source needs a pip requirement or path"; SOURCE=$2; shift ;;
        --extras) [ $# -ge 2 ] || die "--extras needs a list, e.g. supervisor,embedded"; EXTRAS=$2; shift ;;
        --destdir) [ $# -ge 2 ] || die "--destdir needs a directory"; DESTDIR=$2; shift ;;
        --client-secret-from) [ $# -ge 2 ] || die "--client-secret-from needs a file"; CLIENT_SECRET_FROM=$2; shift ;;
        --database-password-from) [ $# -ge 2 ] || die "--database-password-from needs a file"
            DATABASE_PASSWORD_FROM=$2; shift ;;
        --encrypt) ENCRYPT=1 ;;
        --no-prompt) PROMPT=0 ;;
        -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
case "$SHARDS" in ''|*[!0-9]*) die "--shards wants a number, not '$SHARDS'" ;; esac
for extra in $(echo "$EXTRAS" | tr ',' ' '); do
    case "$extra" in supervisor|embedded) ;; *) die "--extras: unknown extra '$extra' (supervisor, embedded)" ;; esac
done
PACKAGE=$SOURCE
if [ -n "$EXTRAS" ]; then
    [ -d "$SOURCE" ] || die "--extras goes with a directory --source; else name them in it: 'kick-monitor[$EXTRAS]'"
    PACKAGE="$SOURCE[$EXTRAS]"
fi
[ "$SHARDS" -le 100 ] || die "--shards: at most 100 (metrics ports 9400-9499)"

ETC=$DESTDIR/etc/kick-monitor
DATA=$DESTDIR/var/lib/kick-monitor
UNITS=$DESTDIR/etc/systemd/system
ENV_FILE=$ETC/kick-monitor.env
CREDSTORE=$DESTDIR/etc/credstore
CREDSTORE_ENCRYPTED=$DESTDIR/etc/credstore.encrypted
for source in "$CLIENT_SECRET_FROM" "$DATABASE_PASSWORD_FROM"; do
    [ -z "$source" ] || [ -r "$source" ] || die "cannot read $source"
done
[ "$ENCRYPT" = 0 ] || [ -z "$DESTDIR" ] || die "--encrypt binds credentials to this host: not with --destdir"

if [ "$DRY_RUN" = 0 ] && [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (or with --dry-run to see what it would do)"
fi

# Print an action, then do it (unless --dry-run).
run() {
    printf '+ %s\n' "$*"
    if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# Write stdin to a file with a mode (and root ownership when installing for real).
write_file() {
    path=$1 mode=$2
    content=$(cat)
    printf '+ write %s (mode %s)\n' "$path" "$mode"
    printf '%s\n' "$content" | sed 's/^/    /'
    if [ "$DRY_RUN" = 0 ]; then
        (umask 077 && printf '%s\n' "$content" > "$path.tmp")
        chmod "$mode" "$path.tmp"
        mv "$path.tmp" "$path"
    fi
}

skip() { printf -- '- %s\n' "$*"; }

owner() {  # install(1) ownership flags, unless staging
    if [ -z "$DESTDIR" ]; then printf -- '-o %s -g %s' "$1" "$2"; fi
}

has_systemd() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

# 1. the user
if [ -n "$DESTDIR" ]; then
    skip "user $USER_NAME: not created (--destdir)"
elif getent passwd "$USER_NAME" >/dev/null 2>&1; then
    skip "user $USER_NAME exists"
else
    run useradd --system --user-group --home-dir /var/lib/kick-monitor --no-create-home \
        --shell /usr/sbin/nologin --comment kick-monitor "$USER_NAME"
fi

# 2. the data directory (the units' StateDirectory= keeps it so too)
# shellcheck disable=SC2046 # owner() expands to separate flags on purpose
run install -d -m 0750 $(owner "$USER_NAME" "$USER_NAME") "$DATA"

# 3. the settings
# shellcheck disable=SC2046
run install -d -m 0755 $(owner root root) "$ETC"
if [ -e "$ENV_FILE" ]; then
    skip "$ENV_FILE exists: kept as it is (compare with etc/kick-monitor.env.example after upgrades)"
else
    # shellcheck disable=SC2046
    run install -m 0600 $(owner root root) "$REPO/etc/kick-monitor.env.example" "$ENV_FILE"
fi
if [ "$SHARDS" -gt 0 ]; then
    i=0
    while [ "$i" -lt "$SHARDS" ]; do
        write_file "$ETC/shard-$i.env" 0600 <<EOF
# shard $i of $SHARDS; written by scripts/install.sh --shards $SHARDS (rewritten on every run)
KICK_MONITOR_SHARD_COUNT=$SHARDS
KICK_MONITOR_METRICS_PORT=$(printf '94%02d' "$i")
EOF
        i=$((i + 1))
    done
fi

# 3b. the secrets, as systemd credentials: never in the env file, never printed
# Store the content of file $2 as credential $1 (a file in /etc/credstore, or encrypted).
store_credential() {
    name=$1 source=$2
    if [ "$ENCRYPT" = 1 ]; then
        run install -d -m 0700 "$CREDSTORE_ENCRYPTED"
        printf '+ systemd-creds encrypt --name=%s <secret> %s/%s\n' "$name" "$CREDSTORE_ENCRYPTED" "$name"
        if [ "$DRY_RUN" = 0 ]; then
            (umask 077 && systemd-creds encrypt --name="$name" "$source" "$CREDSTORE_ENCRYPTED/$name")
        fi
    else
        # shellcheck disable=SC2046
        run install -d -m 0700 $(owner root root) "$CREDSTORE"
        printf '+ write %s/%s (mode 0600; the secret itself is not shown)\n' "$CREDSTORE" "$name"
        if [ "$DRY_RUN" = 0 ]; then
            # shellcheck disable=SC2046
            install -m 0600 $(owner root root) "$source" "$CREDSTORE/$name"
        fi
    fi
}

# Ask for a secret on the terminal (not echoed) into a private temp file; print the file's path.
ask_secret() {
    tmp=$(umask 077 && mktemp)
    trap 'stty echo < /dev/tty; rm -f "$tmp"; exit 130' INT TERM
    printf '%s (empty: skip): ' "$1" > /dev/tty
    stty -echo < /dev/tty
    IFS= read -r answer < /dev/tty || answer=
    stty echo < /dev/tty
    trap - INT TERM
    printf '\n' > /dev/tty
    printf '%s' "$answer" > "$tmp"
    answer=
    printf '%s' "$tmp"
}

credential_exists() { [ -e "$CREDSTORE/$1" ] || [ -e "$CREDSTORE_ENCRYPTED/$1" ]; }

for name in client_secret database_password; do
    if [ "$name" = client_secret ]; then source=$CLIENT_SECRET_FROM; what="Kick client secret"
    else source=$DATABASE_PASSWORD_FROM; what="PostgreSQL password (none for the embedded database)"; fi
    if [ -n "$source" ]; then
        store_credential "$name" "$source"
    elif credential_exists "$name"; then
        skip "credential $name exists: kept (to rotate it: replace the file, then systemctl restart)"
    elif [ "$PROMPT" = 1 ] && [ "$DRY_RUN" = 0 ] && [ -z "$DESTDIR" ] && [ -t 0 ]; then
        tmp=$(ask_secret "$what")
        if [ -s "$tmp" ]; then store_credential "$name" "$tmp"; else skip "credential $name: skipped"; fi
        rm -f "$tmp"
    else
        skip "credential $name: not created (--$(echo "$name" | tr _ -)-from FILE, or run on a terminal)"
    fi
done
if [ "$ENCRYPT" = 1 ]; then
    for unit in kick-monitor.service kick-monitor@.service; do
        run install -d -m 0755 "$UNITS/$unit.d"
        write_file "$UNITS/$unit.d/credentials.conf" 0644 <<EOF
# written by scripts/install.sh --encrypt: the credentials, encrypted, from /etc/credstore.encrypted
[Service]
LoadCredential=
LoadCredentialEncrypted=client_secret
LoadCredentialEncrypted=database_password
LoadCredentialEncrypted=database_url
EOF
    done
fi

# 4. the program, in its own virtualenv
if [ -n "$DESTDIR" ]; then
    skip "virtualenv $PREFIX: not created (--destdir)"
else
    if [ -x "$PREFIX/bin/python" ]; then
        skip "virtualenv $PREFIX exists"
    else
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || die "kick-monitor needs Python 3.11+; $PYTHON is $("$PYTHON" -V 2>&1)"
        run "$PYTHON" -m venv "$PREFIX"
    fi
    run "$PREFIX/bin/python" -m pip install --quiet --upgrade "$PACKAGE"
fi

# 5. the units
run install -d -m 0755 "$UNITS"
run install -m 0644 "$REPO/etc/systemd/kick-monitor.service" "$REPO/etc/systemd/kick-monitor@.service" \
    "$REPO/etc/systemd/kick-monitor.target" "$UNITS/"
if has_systemd; then
    run systemctl daemon-reload
else
    skip "systemctl daemon-reload: systemd is not running here"
fi

# 6. enable, if asked
if [ "$SHARDS" -gt 0 ]; then
    units="kick-monitor.target"
    i=0
    while [ "$i" -lt "$SHARDS" ]; do units="$units kick-monitor@$i.service"; i=$((i + 1)); done
else
    units="kick-monitor.service"
fi
if [ "$ENABLE" = 1 ] && has_systemd; then
    # shellcheck disable=SC2086 # one word per unit
    run systemctl enable --now $units
else
    echo
    echo "Next: edit $ENV_FILE (KICK_MONITOR_DATABASE_URL without a password, KICK_MONITOR_CLIENT_ID);"
    echo "      the secrets are credentials in /etc/credstore (docs/deployment.md), not lines of that file;"
    echo "      with your own PostgreSQL: $PREFIX/bin/kick-monitor --config $ENV_FILE db migrate"
    echo "      (unset, the service needs --extras embedded and migrates that database itself); then"
    echo "      systemctl enable --now $units"
fi
