#!/usr/bin/env bash
# The project's environment: chosen, built and entered here, and nowhere else.
#
#   tools/devenv.sh setup                build or refresh the environment (idempotent)
#   tools/devenv.sh run CMD...           run CMD inside it, in the current directory
#   tools/devenv.sh which                print the chosen path: native or rootfs
#   tools/devenv.sh lock                 re-resolve the dependencies and rewrite the lock file
#   tools/devenv.sh install-launcher DIR write DIR/dolg-tfx, which runs the CLI in this environment
#   tools/devenv.sh packages PKG...      Debian packages the tests need (e.g. chromium), installed
#                                        into the environment's system where missing
#
# Why two paths: TFX 1.21's ml-metadata and TFDV wheels are manylinux_2_39 only, so a host
# with glibc < 2.39 (Debian 12) cannot install them. There we build a Debian 13 root
# filesystem once (debootstrap, cached outside the repo) and, in a private mount namespace,
# put its /usr (and, on a host without merged /usr, its /bin, /lib, ...) over the host's, and
# its /etc under the host's (an overlay where the host's files win).
# Nothing else moves: /home, /tmp, /data, network mounts, the repository and the caller's
# working directory are where they are on the host, so every path means the same thing inside
# and out. The venv lives inside the tree's /usr, so it appears with it and hides nothing.
# The namespace is private (unshare), so the kernel undoes every mount when the command ends,
# however it ends (error, Ctrl-C, SIGKILL).
#
# Settings (environment variables):
#   DOLG_TFX_ENV=native|rootfs   force a path (default: native when glibc >= 2.39 and a
#                                Python 3.10-3.13 is present, otherwise rootfs)
#   DOLG_TFX_CACHE=DIR           where the root filesystem lives (default /var/cache/dolg-tfx)
#   DOLG_TFX_MIRROR=URL          Debian mirror for debootstrap (default: debootstrap's own)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${DOLG_TFX_CACHE:-/var/cache/dolg-tfx}
ROOTFS=$CACHE/trixie-rootfs
LOCK=requirements/lock.txt
EXTRAS="test,kubeflow"
ROOTFS_PACKAGES=python3,python3-venv,python3-pip,python3-dev,g++,ca-certificates
# The venv inside the root filesystem's /usr: visible exactly when that /usr is mounted.
IN_VENV=/usr/lib/dolg-tfx/venv
# Host top-level folders that must come from the tree when the host has no merged /usr.
SYSTEM_DIRS="bin sbin lib lib32 lib64 libx32"

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

# The host environment minus what would point Python or the loader at the host's own files.
# Replaces the calling shell (exec), so whatever runs next keeps the caller's pid: a signal sent
# to that pid (SIGTERM from kill or a supervisor, SIGHUP from a closed terminal, SIGINT) reaches
# the command itself instead of ending a bash that leaves the command running as an orphan.
# Callers use it last, or in a subshell.
exec_clean_env() {
  exec env -u PYTHONHOME -u PYTHONPATH -u LD_LIBRARY_PATH -u LD_PRELOAD -u VIRTUAL_ENV \
      -u PYTHONSTARTUP -u CONDA_PREFIX "$@"
}

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
  [ -x "$REPO/.venv/bin/python" ] || die "no environment yet: run 'make setup' in $REPO"
  exec_clean_env PATH="$REPO/.venv/bin:$PATH" VIRTUAL_ENV="$REPO/.venv" DOLG_TFX_ENV_PATH=native \
    PYTHONPATH="$REPO" "$@"
}

# ---------------------------------------------------------------- rootfs path
need_root() {
  [ "$(id -u)" = 0 ] && return 0
  die "this host has glibc < 2.39 (or DOLG_TFX_ENV=rootfs), so the project runs with a Debian 13
  /usr mounted over the host's, which needs root to build and enter. Either run as root, or use a
  host with glibc >= 2.39 and Python 3.10-3.13 (Debian 13, Ubuntu 24.04), or the project's
  container image (kubeflow/Dockerfile)."
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
  local tmp=$ROOTFS.partial mirror=()
  [ -n "${DOLG_TFX_MIRROR:-}" ] && mirror=("$DOLG_TFX_MIRROR")
  rm -rf "$tmp"
  log "building a Debian 13 root filesystem in $ROOTFS (once; about 1-2 min, 700 MB)"
  # In its own mount namespace, so whatever debootstrap mounts cannot outlive it.
  unshare --mount --propagation private -- \
    debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" trixie "$tmp" "${mirror[@]}" >&2 \
    || die "debootstrap failed; the partial tree is left at $tmp"
  touch "$tmp/.dolg-tfx-rootfs-ok"
  mv "$tmp" "$ROOTFS"
}

# Run a command with the tree's /usr over the host's. The mounts live in a private namespace
# that ends with the command, so none leaks; the working directory is the caller's.
# Exec all the way: this shell becomes env, env becomes unshare, unshare (no --fork) enters the
# namespace itself and becomes the bash below, which becomes the command. One pid throughout.
rootfs_exec() {
  exec_clean_env PATH="$IN_VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    VIRTUAL_ENV="$IN_VENV" DOLG_TFX_ENV_PATH=rootfs PYTHONPATH="$REPO" \
    unshare --mount --propagation private -- /bin/bash -c '
    set -e
    root=$1 dirs=$2; shift 2
    mount --bind "$root/usr" /usr
    for d in $dirs; do   # a host without merged /usr keeps real /bin, /lib...: cover them too
      if [ -d "/$d" ] && [ ! -L "/$d" ] && [ -d "$root/usr/$d" ]; then mount --bind "$root/usr/$d" "/$d"; fi
    done
    # /etc stays the host'"'"'s (users, resolver, certificates, pip settings); what only the tree
    # has (configuration of packages installed into it, e.g. /etc/chromium.d) shows through
    # from below. Read-only: nothing here is meant to change the host'"'"'s /etc.
    mount -t overlay "$root/etc" -o "lowerdir=/etc:$root/etc" /etc 2>/dev/null || true
    # The loader cache and alternatives name files of the tree, not of the host.
    mount --bind "$root/etc/ld.so.cache" /etc/ld.so.cache
    [ -d /etc/alternatives ] && mount --bind "$root/etc/alternatives" /etc/alternatives
    exec "$@"' _ "$ROOTFS" "$SYSTEM_DIRS" "$@"
}

rootfs_setup() {
  need_root
  build_rootfs
  local want; want="$(stamp_of) $REPO"
  [ "$(cat "$ROOTFS$IN_VENV/.dolg-tfx-stamp" 2>/dev/null)" = "$want" ] && return 0
  log "installing the project and its locked dependencies into $ROOTFS$IN_VENV"
  # The editable install records the repository's real path (the one the host sees).
  ( cd "$REPO" && rootfs_exec /bin/sh -c "
      set -e
      [ -x $IN_VENV/bin/python ] || python3 -m venv $IN_VENV
      $IN_VENV/bin/pip install -q --disable-pip-version-check -c '$REPO/$LOCK' -e '$REPO[$EXTRAS]'
      echo '$want' > $IN_VENV/.dolg-tfx-stamp" )
}

rootfs_run() {
  need_root
  [ -x "$ROOTFS$IN_VENV/bin/python" ] || die "no environment yet: run 'make setup' in $REPO"
  rootfs_exec "$@"
}

# ---------------------------------------------------------------- Debian packages
# The tests' own system needs (a headless browser for the report test). Installed where the
# environment's programs come from: the host on the native path, the tree on the rootfs path
# (with apt run inside the tree, so the host's package database is never touched).
native_packages() {
  dpkg-query -W "$@" >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || die "missing Debian packages $*: install them (apt-get install $*) or run as root"
  log "installing $* with apt"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

rootfs_packages() {
  need_root
  build_rootfs
  chroot "$ROOTFS" dpkg-query -W "$@" >/dev/null 2>&1 && return 0
  log "installing $* into $ROOTFS with apt"
  cp -f /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
  unshare --mount --propagation private -- /bin/bash -c '
    set -e
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    chroot "$root" apt-get update -qq
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
    ' _ "$ROOTFS" "$@" >&2
}

# ---------------------------------------------------------------- launcher
install_launcher() {
  local dir=${1:?usage: devenv.sh install-launcher DIR}
  mkdir -p "$dir"
  cat > "$dir/dolg-tfx.new" <<EOF
#!/bin/sh
# dolg-tfx: runs the DOLG-TFX command line in the environment of $REPO
# (written by 'make install'; run it again after moving the clone).
exec "$REPO/tools/devenv.sh" run dolg-tfx "\$@"
EOF
  chmod 755 "$dir/dolg-tfx.new"
  mv "$dir/dolg-tfx.new" "$dir/dolg-tfx"
  log "wrote $dir/dolg-tfx"
}

# ---------------------------------------------------------------- commands
cmd=${1:-}; shift || true
case "$cmd" in
  which) choose ;;
  setup) "$(choose)_setup" ;;
  run)
    [ $# -gt 0 ] || die "usage: devenv.sh run CMD..."
    # Already inside (a test, or a launcher called from a CLI subprocess): run it as it is.
    if [ -n "${DOLG_TFX_ENV_PATH:-}" ]; then exec "$@"; fi
    # Both paths exec (exec_clean_env): the pid of this script, and of the launcher that execs
    # it, ends up being CMD's, so signals reach CMD and its exit status is the caller's.
    "$(choose)_run" "$@"
    ;;
  install-launcher) install_launcher "$@" ;;
  packages)
    [ $# -gt 0 ] || die "usage: devenv.sh packages PKG..."
    # Inside already: the path this environment was entered on decides where packages go.
    "${DOLG_TFX_ENV_PATH:-$(choose)}_packages" "$@"
    ;;
  lock)
    path=$(choose)
    "${path}_setup"
    ( cd "$REPO" && "${path}_run" /bin/sh -c "pip install -q -U -e '.[$EXTRAS]' && {
      echo '# Resolved by make lock ('\$(python -V)'). Every install path passes this file to pip';
      echo '# as constraints, so every machine gets the same set.';
      pip freeze --exclude-editable 2>/dev/null | grep -v '^-e'; } > $LOCK.new && mv $LOCK.new $LOCK" )
    ;;
  *) die "usage: devenv.sh setup | run CMD... | which | lock | install-launcher DIR | packages PKG..." ;;
esac
