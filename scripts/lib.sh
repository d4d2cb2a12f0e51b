# shellcheck shell=bash
# Shared settings for the scripts in this folder; sourced, never run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"   # git-ignored: bin/, data/, logs/, pid files
VENV="$ROOT/.venv"
export ROOT LOCAL VENV

export RABBITMQ_URL="${RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/}"
export MONGODB_URL="${MONGODB_URL:-mongodb://127.0.0.1:27017/}"
# The embedded store's JVM options on top of its launcher's own (scripts/install):
# the long-running server takes its whole heap up front.
export EMBEDDED_STORE_JAVA_OPTS="${EMBEDDED_STORE_JAVA_OPTS:--Xms512m}"

# Tools scripts/services generates (a rabbitmqctl aimed at its node) come
# first, for the scripts and for the tests they run.
PATH="$LOCAL/bin:$PATH"

log() {
    printf '[setup] %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

sudo_if_needed() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

# port_open HOST PORT: true if something accepts TCP connections there.
port_open() {
    # shellcheck disable=SC2016 # $1 and $2 expand in the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# wait_for_port HOST PORT SECONDS
wait_for_port() {
    local host=$1 port=$2 deadline=$((SECONDS + $3))
    until port_open "$host" "$port"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.5
    done
}

# url_host_port URL DEFAULT_PORT: prints "host port" of a single-host URL
# such as amqp://user:pass@host:5672/vhost.
url_host_port() {
    local rest=${1#*://}
    rest=${rest%%[/?]*}
    rest=${rest##*@}
    if [[ $rest == *,* ]]; then   # a replica-set list is never "ours"
        printf 'multiple-hosts %s\n' "$2"
        return
    fi
    local host=${rest%%:*} port=$2
    if [[ $rest == *:* ]]; then
        port=${rest##*:}
    fi
    printf '%s %s\n' "$host" "$port"
}

# is_local_host HOST: only these make us start a server ourselves.
is_local_host() {
    [[ $1 == 127.0.0.1 || $1 == localhost ]]
}
