#!/bin/sh
# As the official image does: without a config file Redis 7 listens in protected mode, which refuses
# every other container; the compose network is what keeps it private.
set -eu
if [ "$1" = redis-server ]; then
  chown redis:redis /data
  shift
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server --protected-mode no "$@"
fi
exec "$@"
