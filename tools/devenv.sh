#!/usr/bin/env bash
# The project's environment: chosen, built and entered here, and nowhere else.
#
#   tools/devenv.sh setup          build or refresh the environment (idempotent)
#   tools/devenv.sh run CMD...     run CMD inside it, from the current directory
#   tools/devenv.sh which          print the chosen path: native or rootfs
#   tools/devenv.sh lock           re-resolve the dependencies and rewrite the lock file
#
# Why two paths: TFX 1.21's ml-metadata and TFDV wheels are manylinux_2_39 only, so a host
# with glibc < 2.39 (Debian 12) cannot install them. There we build a Debian 13 root
# filesystem once (debootstrap, cached outside the repo) and run inside it with the repo
# bind-mounted at /src. Every mount is made inside a private mount namespace (unshare), so
# the kernel undoes them all when the command ends, however it ends (error, Ctrl-C, kill).
#
# Settings (environment variables):
#   DOLG_TFX_ENV=native|rootfs   force a path (default: native when glibc >= 2.39 and a
#                                Python 3.10-3.13 is present, otherwise rootfs)
#   DOLG_TFX_CACHE=DIR           where the root filesystem lives (default /var/cache/dolg-tfx)
#   DOLG_TFX_MIRROR=URL          Debian mirror for debootstrap (default deb.debian.org)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${DOLG_TFX_CACHE:-/var/cache/dolg-tfx}
ROOTFS=$CACHE/trixie-rootfs
MIRROR=${DOLG_TFX_MIRROR:-http://deb.debian.org/debian}
LOCK=requirements/lock.txt
EXTRAS="test,kubeflow"
ROOTFS_PACKAGES=python3,python3-venv,python3-pip,python3-dev,g++,ca-certificates
# Inside the root filesystem: fixed paths, whatever the clone's location on the host.
IN_VENV=/opt/venv
IN_SRC=/src

log() { printf '[devenv] %s\n' "$*" >&2; }
die() { printf '[devenv] error: %s\n' "$*" >&2; exit 1; }

glibc_ok() {
  local v
  v=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}') || return 1
  [ -n "$v" ] && [ "$(printf '2.39\n%s\n' "$v" | sort -V | head -1)" = 2.39 ]
}

native_python() {
  local py
  for py in python3.13 python3.12 python3.11 python3.10 python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import sys, venv; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null; then
      command -v "$py"; return 0
    fi
  done
  return 1
}

choose() {
  case "${DOLG_TFX_ENV:-auto}" in
    native|rootfs) echo "$DOLG_TFX_ENV" ;;
    auto) if glibc_ok && native_python >/dev/null; then echo native; else echo rootfs; fi ;;
    *) die "DOLG_TFX_ENV must be native, rootfs or unset, not '$DOLG_TFX_ENV'" ;;
  esac
}

# The stamp says which inputs the venv was built from; an unchanged stamp means no pip run.
stamp_of() { cat "$REPO/pyproject.toml" "$REPO/$LOCK" 2>/dev/null | sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------- native path
native_setup() {
  local py venv=$REPO/.venv
  py=$(native_python) || die "no Python 3.10-3.13 with venv found; install one or use DOLG_TFX_ENV=rootfs"
  glibc_ok || log "warning: glibc < 2.39 here; TFX 1.21 wheels will not install natively"
  [ -x "$venv/bin/python" ] || { log "creating $venv with $py"; "$py" -m venv "$venv"; }
  if [ "$(cat "$venv/.dolg-tfx-stamp" 2>/dev/null)" != "$(stamp_of)" ]; then
    log "installing the project and its locked dependencies into $venv"
    "$venv/bin/pip" install -q -c "$REPO/$LOCK" -e "$REPO[$EXTRAS]"
    stamp_of > "$venv/.dolg-tfx-stamp"
  fi
}

native_run() {
  export PATH="$REPO/.venv/bin:$PATH" VIRTUAL_ENV="$REPO/.venv"
  exec "$@"
}

# ---------------------------------------------------------------- rootfs path
need_root() {
  [ "$(id -u)" = 0 ] && return 0
  die "this host has glibc < 2.39 (or DOLG_TFX_ENV=rootfs), so the project runs in a Debian 13
  root filesystem, which needs root to build and enter. Either run as root, or use a host with
  glibc >= 2.39 and Python 3.10-3.13 (Debian 13, Ubuntu 24.04), or the project's container
  image (kubeflow/Dockerfile)."
}

ensure_debootstrap() {
  command -v debootstrap >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "debootstrap is missing and there is no apt-get to install it"
  log "installing debootstrap"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
}

build_rootfs() {
  [ -f "$ROOTFS/.dolg-tfx-rootfs-ok" ] && return 0
  ensure_debootstrap
  mkdir -p "$CACHE"
  local tmp=$ROOTFS.partial
  rm -rf "$tmp"
  log "building a Debian 13 root filesystem in $ROOTFS (once; about 1 min, 450 MB)"
  # In its own mount namespace, so whatever debootstrap mounts cannot outlive it.
  unshare --mount --propagation private -- \
    debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" trixie "$tmp" "$MIRROR" >&2 \
    || die "debootstrap failed (mirror $MIRROR); the partial tree is left at $tmp"
  mkdir -p "$tmp$IN_SRC"
  touch "$tmp/.dolg-tfx-rootfs-ok"
  mv "$tmp" "$ROOTFS"
}

# Run a command inside the root filesystem. Mounts live in a private namespace: none leaks.
rootfs_exec() {
  local workdir=$1; shift
  local ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
  local pass=() v
  for v in TERM CI PYTEST_ADDOPTS http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY \
           PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_DEFAULT_TIMEOUT; do
    [ -n "${!v:-}" ] && pass+=("$v=${!v}")
  done
  while IFS='=' read -r v _; do pass+=("$v=${!v}"); done < <(env | grep -E '^DOLG_TFX_[A-Z_]+=' || true)
  # The host's CA bundle and resolver, so pip reaches the registry the way the host does.
  [ -f "$ca" ] && cp -f "$ca" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  cp -f /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
  exec unshare --mount --propagation private -- /bin/bash -c '
    set -e
    root=$1 repo=$2 src=$3; shift 3
    mount --bind "$repo" "$root$src"
    # The project folder'"'"'s shared/ (reference data beside the clone), read-only, if present.
    if [ -d "$repo/../shared" ]; then
      mkdir -p "$root/shared"
      mount --bind "$repo/../shared" "$root/shared"
      mount -o remount,bind,ro "$root/shared"
    fi
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    exec chroot "$root" "$@"' _ "$ROOTFS" "$REPO" "$IN_SRC" \
    /usr/bin/env -i HOME=/root LANG=C.UTF-8 LC_ALL=C.UTF-8 \
      PATH="$IN_VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      VIRTUAL_ENV="$IN_VENV" SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
      PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
      DOLG_TFX_ENV_PATH=rootfs DOLG_TFX_HOST_SRC="$REPO" DOLG_TFX_SRC="$IN_SRC" "${pass[@]}" \
      /bin/sh -c 'cd "$0" && exec "$@"' "$workdir" "$@"
}

rootfs_setup() {
  need_root
  build_rootfs
  local want; want=$(stamp_of)
  if [ "$(cat "$ROOTFS$IN_VENV/.dolg-tfx-stamp" 2>/dev/null)" != "$want" ]; then
    log "installing the project and its locked dependencies into the root filesystem's venv"
    ( rootfs_exec "$IN_SRC" /bin/sh -c "
        set -e
        [ -x $IN_VENV/bin/python ] || python3 -m venv $IN_VENV
        $IN_VENV/bin/pip install -q -c $IN_SRC/$LOCK -e '$IN_SRC[$EXTRAS]'
        echo $want > $IN_VENV/.dolg-tfx-stamp" )
  fi
}

rootfs_run() {
  need_root
  local rel=${PWD#"$REPO"}
  [ "$rel" = "$PWD" ] && rel=""   # outside the repo: start at its root
  rootfs_exec "$IN_SRC$rel" "$@"
}

# ---------------------------------------------------------------- commands
cmd=${1:-}; shift || true
path=$(choose)
case "$cmd" in
  which) echo "$path" ;;
  setup) "${path}_setup" ;;
  run) [ $# -gt 0 ] || die "usage: devenv.sh run CMD..."; "${path}_run" "$@" ;;
  lock)
    "${path}_setup"
    "${path}_run" /bin/sh -c "pip install -q -U -e '.[$EXTRAS]' && {
      echo '# Resolved by make lock ('\$(python -V)'). Every install path passes this file to pip';
      echo '# as constraints, so every machine gets the same set.';
      pip freeze --exclude-editable 2>/dev/null | grep -v '^-e'; } > $LOCK.new && mv $LOCK.new $LOCK"
    ;;
  *) die "usage: devenv.sh setup | run CMD... | which | lock" ;;
esac
