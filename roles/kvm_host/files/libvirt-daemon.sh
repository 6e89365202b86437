#!/bin/sh
# libvirt's daemons on a host without systemd as PID 1 (vce.kvm.kvm_host role).
#   libvirt-daemon.sh running DAEMON   exit 0 when it runs, 1 when not
#   libvirt-daemon.sh restart DAEMON   restart it (virtlogd re-executes itself, keeping the
#                                      guests' open console logs), or start it when not running
# A daemon runs when its pid file names a live process of that name: a pid file outlives a
# killed daemon and its pid may be reused.
set -u
action=$1
daemon=$2
pid=$(cat "/run/$daemon.pid" 2>/dev/null || true)

alive() {
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$daemon" ] \
    && ! grep -q '^State:[[:space:]]*[ZX]' "/proc/$pid/status" 2>/dev/null
}

case "$action" in
  running)
    alive
    ;;
  restart)
    if alive; then
      if [ "$daemon" = virtlogd ]; then
        exec kill -USR1 "$pid"
      fi
      kill "$pid"
      tries=0
      while alive && [ "$tries" -lt 100 ]; do
        sleep 0.1
        tries=$((tries + 1))
      done
      if alive; then
        echo "$daemon ($pid) did not stop within 10 s" >&2
        exit 1
      fi
    fi
    exec "$daemon" -d
    ;;
  *)
    echo "usage: $0 running|restart DAEMON" >&2
    exit 2
    ;;
esac
