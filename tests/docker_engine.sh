#!/usr/bin/env bash
# Makes sure a Docker engine answers on this machine (for tests/simulate and `relaynet simulate`).
#
#   - `docker info` already works: exit 0, print nothing.
#   - otherwise: install docker.io with apt if `dockerd` is missing, start
#     `dockerd --iptables=false --bridge=none` in the background (the host firewall is left
#     alone; containers use host networking), wait up to RELAYNET_DOCKERD_WAIT_S seconds
#     (default 60) and print one line with the time it took.
#
# Needs root when it has to install or start the engine. Idempotent.
# Environment:
#   RELAYNET_DOCKERD_LOG     dockerd's log file (default /var/log/relaynet-dockerd.log)
#   RELAYNET_DOCKERD_WAIT_S  how long to wait for the engine (default 60)
set -euo pipefail

log_file=${RELAYNET_DOCKERD_LOG:-/var/log/relaynet-dockerd.log}
wait_s=${RELAYNET_DOCKERD_WAIT_S:-60}
pid_file=/var/run/docker.pid

fail() {
    echo "docker_engine.sh: $*" >&2
    exit 1
}

engine_answers() {
    docker info >/dev/null 2>&1
}

# A live process (a zombie counts as dead: nothing may reap it here).
is_alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != Z ]
}

# A live process whose command name is dockerd (a pid file's PID may have been reused).
is_dockerd() {
    [ "$(cat "/proc/$1/comm" 2>/dev/null || true)" = dockerd ] && is_alive "$1"
}

if command -v docker >/dev/null 2>&1 && engine_answers; then
    exit 0
fi

started=$(date +%s.%N)

case "${DOCKER_HOST:-unix:///var/run/docker.sock}" in
unix:///var/run/docker.sock | unix:///run/docker.sock) ;;
*) fail "DOCKER_HOST=$DOCKER_HOST does not answer; this script only starts a local engine at unix:///var/run/docker.sock" ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    reason=$(docker info 2>&1 >/dev/null | grep -m1 -v -e '^\s*$' -e '^WARNING' || true)
    fail "no Docker engine answers (${reason:-docker client missing}) and this is not root: start dockerd yourself, join the docker group, or run as root"
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || fail "dockerd is missing and apt-get is not available"
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io; } \
        >"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        rm -f "$apt_log"
        fail "installing docker.io with apt-get failed (output above)"
    fi
    rm -f "$apt_log"
    command -v dockerd >/dev/null 2>&1 || fail "docker.io installed but dockerd is not on PATH"
fi

# A pid file left by a dead dockerd (or naming a PID reused by another process) is stale:
# remove it so that only a live dockerd makes us wait instead of starting one.
if [ -f "$pid_file" ]; then
    old_pid=$(cat "$pid_file" 2>/dev/null || true)
    if [ -n "$old_pid" ] && is_dockerd "$old_pid"; then
        echo "docker_engine.sh: dockerd (pid $old_pid) is running but not answering yet; waiting" >&2
    else
        rm -f "$pid_file"
    fi
fi

start_dockerd() {
    mkdir -p "$(dirname "$log_file")"
    nohup dockerd --iptables=false --bridge=none </dev/null >>"$log_file" 2>&1 &
    dockerd_pid=$!
}

if [ -f "$pid_file" ]; then
    dockerd_pid=$(cat "$pid_file" 2>/dev/null || true)
else
    start_dockerd
fi

deadline=$(($(date +%s) + wait_s))
retried=no
until engine_answers; do
    if ! is_alive "$dockerd_pid"; then
        # Right after a dockerd was killed, the containerd it managed may still be shutting
        # down, and a new dockerd gives up waiting for it; a second start finds a clean state.
        if [ "$retried" = no ] && [ "$(date +%s)" -lt "$deadline" ]; then
            retried=yes
            echo "docker_engine.sh: dockerd (pid $dockerd_pid) exited before answering; starting it once more" >&2
            sleep 1
            if [ -f "$pid_file" ] && ! is_dockerd "$(cat "$pid_file" 2>/dev/null || true)"; then
                rm -f "$pid_file"
            fi
            start_dockerd
            continue
        fi
        tail -n 20 "$log_file" >&2 || true
        fail "dockerd exited before answering (log: $log_file, last lines above)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -n 20 "$log_file" >&2 || true
        fail "dockerd did not answer within ${wait_s}s (log: $log_file, last lines above)"
    fi
    sleep 0.1
done

elapsed=$(echo "$(date +%s.%N) $started" | awk '{printf "%.1f", $1 - $2}')
echo "docker engine ready in ${elapsed}s (dockerd pid $dockerd_pid, log $log_file)"
