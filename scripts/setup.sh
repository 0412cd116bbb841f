#!/usr/bin/env bash
# Sets up everything the workbench needs on a Debian machine, idempotently:
#   apt packages (Docker Engine, debootstrap, ActiveMQ, Docker Distribution, PostgreSQL, venv), the
#   Docker daemon, the virtual environment in .venv with the project and its developer
#   tools, and the images (the offline Debian base image and the reference algorithms).
# Run by scripts/demo.sh and scripts/test.sh; safe to run again at any time.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$REPO/.work"
mkdir -p "$WORK"

say() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_apt_packages() {
    local wanted=(docker.io debootstrap tar util-linux ca-certificates activemq libxstream-java docker-registry postgresql)
    python3 -c 'import venv, ensurepip' 2>/dev/null || wanted+=(python3-venv)
    local missing=()
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]}"
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
    fi
}

docker_cli() {
    # Debian's client matches Debian's daemon; fall back to whatever docker is on PATH.
    if [ -x /usr/bin/docker ]; then /usr/bin/docker "$@"; else docker "$@"; fi
}

start_docker() {
    if docker_cli info >/dev/null 2>&1; then return; fi
    say "starting dockerd (log: $WORK/dockerd.log)"
    as_root bash -c "nohup dockerd >'$WORK/dockerd.log' 2>&1 &"
    for _ in $(seq 60); do
        docker_cli info >/dev/null 2>&1 && return
        sleep 1
    done
    say "dockerd did not answer within 60 s; last log lines:"
    tail -n 20 "$WORK/dockerd.log" >&2 || true
    exit 1
}

make_venv() {
    local stamp="$REPO/.venv/.installed" want
    want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
    say "creating the virtual environment in .venv"
    [ -x "$REPO/.venv/bin/python" ] || python3 -m venv "$REPO/.venv"
    "$REPO/.venv/bin/python" -m pip install -q --upgrade pip >&2
    "$REPO/.venv/bin/python" -m pip install -q -e "$REPO[dev]" >&2
    echo "$want" >"$stamp"
}

build_images() {
    "$REPO/.venv/bin/workbench" images build-base
    "$REPO/.venv/bin/workbench" images build-algorithms >/dev/null
}

install_apt_packages
start_docker
make_venv
build_images
say "ready"
