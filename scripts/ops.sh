#!/bin/sh
# Day-to-day operations of an installed kick-monitor; the Makefile's ops targets call this.
#
#   ops.sh metrics [N]        print one scrape of the metrics endpoint (of shard N's process tree)
#   ops.sh restart-shard N    restart shard N (systemd kick-monitor@N, else supervisord)
#   ops.sh logs [N]           follow the logs (of shard N; all units when N is empty)
#
# It works with what is installed: systemd when the template unit is known to a running
# systemd, supervisord otherwise. KICK_MONITOR_MANAGER=systemd|supervisor forces one.
# Environment: KICK_MONITOR_METRICS_HOST / _PORT (else read from the env files below),
# KICK_MONITOR_ENV_FILE (default /etc/kick-monitor/kick-monitor.env),
# KICK_MONITOR_SUPERVISOR_CONF (passed to supervisorctl -c), SUPERVISORCTL (default supervisorctl).
set -eu

ENV_FILE=${KICK_MONITOR_ENV_FILE:-/etc/kick-monitor/kick-monitor.env}
ETC_DIR=$(dirname "$ENV_FILE")
PROGRAM=kick-monitor-shard       # [program:...] in etc/supervisor/kick-monitor.conf
SHARD_PORT_PREFIX=94             # shard N serves metrics on 94NN in the shipped configs

die() { echo "ops.sh: $*" >&2; exit 2; }

need_shard() {
    case "${1:-}" in
        ''|*[!0-9]*) die "give a shard number, e.g. N=3" ;;
    esac
}

# The last KEY=value of an env file, quotes stripped; empty when absent or unreadable.
env_file_value() {
    [ -r "$2" ] || return 0
    sed -n "s/^[[:space:]]*\(export[[:space:]]\{1,\}\)\{0,1\}$1[[:space:]]*=[[:space:]]*//p" "$2" \
        | tail -n 1 | sed "s/^[\"']//; s/[\"'][[:space:]]*$//"
}

manager() {
    if [ -n "${KICK_MONITOR_MANAGER:-}" ]; then
        echo "$KICK_MONITOR_MANAGER"
    elif [ -d /run/systemd/system ] && systemctl cat kick-monitor@.service >/dev/null 2>&1; then
        echo systemd
    elif command -v "${SUPERVISORCTL:-supervisorctl}" >/dev/null 2>&1; then
        echo supervisor
    else
        die "neither a systemd kick-monitor@.service nor supervisorctl found; see docs/deployment.md"
    fi
}

supervisorctl_cmd() {
    if [ -n "${KICK_MONITOR_SUPERVISOR_CONF:-}" ]; then
        "${SUPERVISORCTL:-supervisorctl}" -c "$KICK_MONITOR_SUPERVISOR_CONF" "$@"
    else
        "${SUPERVISORCTL:-supervisorctl}" "$@"
    fi
}

process_name() { printf '%s:%s_%02d' "$PROGRAM" "$PROGRAM" "$1"; }

metrics() {
    host=${KICK_MONITOR_METRICS_HOST:-$(env_file_value KICK_MONITOR_METRICS_HOST "$ENV_FILE")}
    port=${KICK_MONITOR_METRICS_PORT:-}
    if [ -z "$port" ] && [ -n "${1:-}" ]; then
        need_shard "$1"
        port=$(env_file_value KICK_MONITOR_METRICS_PORT "$ETC_DIR/shard-$1.env")
        [ -n "$port" ] || port=$(printf '%s%02d' "$SHARD_PORT_PREFIX" "$1")
    fi
    [ -n "$port" ] || port=$(env_file_value KICK_MONITOR_METRICS_PORT "$ENV_FILE")
    case "${port:-0}" in
        0) die "metrics are off: set KICK_MONITOR_METRICS_PORT (in $ENV_FILE or the environment)" ;;
    esac
    case "${host:=127.0.0.1}" in
        *:*) host="[$host]" ;;  # IPv6 literal
    esac
    url="http://$host:$port/metrics"
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 10 "$url"
    else
        python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$url"
    fi
}

restart_shard() {
    need_shard "${1:-}"
    case $(manager) in
        systemd) exec systemctl restart "kick-monitor@$1.service" ;;
        supervisor) supervisorctl_cmd restart "$(process_name "$1")" ;;
        *) die "unknown KICK_MONITOR_MANAGER" ;;
    esac
}

logs() {
    if [ -n "${1:-}" ]; then need_shard "$1"; fi
    case $(manager) in
        systemd)
            if [ -n "${1:-}" ]; then
                exec journalctl -u "kick-monitor@$1.service" -f
            fi
            exec journalctl -u kick-monitor.service -u 'kick-monitor@*.service' -f
            ;;
        supervisor)
            [ -n "${1:-}" ] || die "supervisord keeps one log per shard: give N"
            supervisorctl_cmd tail -f "$(process_name "$1")"
            ;;
        *) die "unknown KICK_MONITOR_MANAGER" ;;
    esac
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
    metrics) metrics "$@" ;;
    restart-shard) restart_shard "$@" ;;
    logs) logs "$@" ;;
    *) die "usage: ops.sh metrics [N] | restart-shard N | logs [N]" ;;
esac
