# Functions that install and start what peergrid and its tests use, on Debian, on loopback only.
# Sourced by scripts/up and scripts/test. Each is idempotent: it does nothing when the thing is there.

PEERGRID_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERGRID_STATE="${PEERGRID_STATE:-$PEERGRID_ROOT/var/services}"
mkdir -p "$PEERGRID_STATE"

say() { printf '[peergrid] %s\n' "$*" >&2; }

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  # apt_install PACKAGE... : install the missing ones (needs root).
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! is_root; then
    say "missing Debian packages: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}"
    return 1
  fi
  say "installing ${missing[*]}"
  if [ ! -f "$PEERGRID_STATE/apt-updated" ]; then
    apt-get update -q >/dev/null && touch "$PEERGRID_STATE/apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_venv() {
  # ensure_venv [EXTRAS] : a virtual environment in .venv with peergrid installed in it.
  local extras="${1:-}"
  local venv="$PEERGRID_ROOT/.venv"
  local stamp="$venv/.peergrid-installed$extras"
  if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    python3 -m venv "$venv" || { apt_install python3-venv && python3 -m venv "$venv"; }
  fi
  if [ ! -f "$stamp" ] || [ "$PEERGRID_ROOT/pyproject.toml" -nt "$stamp" ]; then
    say "installing peergrid${extras} into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$PEERGRID_ROOT$extras"
    touch "$stamp"
  fi
}

docker_up() { docker info >/dev/null 2>&1; }

ensure_docker() {
  # A running Docker engine: installed from Debian and started when this user may.
  docker_up && return 0
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io || return 1
  if ! is_root; then
    say "the Docker engine is not running: start it with 'sudo systemctl start docker' (or add yourself to the docker group)"
    return 1
  fi
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start docker >/dev/null 2>&1 || true
  fi
  if ! docker_up; then
    say "starting dockerd (log: $PEERGRID_STATE/dockerd.log)"
    nohup dockerd >"$PEERGRID_STATE/dockerd.log" 2>&1 &
  fi
  for _ in $(seq 1 60); do docker_up && return 0; sleep 1; done
  say "dockerd did not come up; see $PEERGRID_STATE/dockerd.log"
  return 1
}

ensure_compose() {
  # Docker Compose: the v2 plugin when the engine has it, else Debian's docker-compose.
  command -v docker-compose >/dev/null 2>&1 && return 0
  docker compose version >/dev/null 2>&1 && return 0
  apt_install docker-compose
}

ensure_test_image() {
  # peergrid-test/busybox:latest, made from Debian's busybox-static: nothing is pulled.
  local image="${PEERGRID_TEST_IMAGE:-peergrid-test/busybox:latest}"
  docker image inspect "$image" >/dev/null 2>&1 && return 0
  apt_install busybox-static || return 1
  local root; root="$(mktemp -d)"
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/root"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$image" >/dev/null
  rm -rf "$root"
  say "built test image $image"
}

ensure_websocketd_image() {
  # peergrid-test/websocketd:latest: the busybox test image with Debian's websocketd and the
  # libraries it links copied in; nothing is pulled.
  local image="${PEERGRID_TEST_WEBSOCKETD_IMAGE:-peergrid-test/websocketd:latest}"
  local base="${PEERGRID_TEST_IMAGE:-peergrid-test/busybox:latest}"
  docker image inspect "$image" >/dev/null 2>&1 && return 0
  command -v websocketd >/dev/null 2>&1 || apt_install websocketd || return 1
  local binary root container
  binary="$(command -v websocketd)"
  root="$(mktemp -d)"
  mkdir -p "$root/bin"
  cp "$binary" "$root/bin/websocketd"
  # Copy each shared library ldd names (and the loader) at its own path, symlinks resolved.
  for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  container="$(docker create "$base" /bin/true)" || { rm -rf "$root"; return 1; }
  docker cp "$root/." "$container:/" >/dev/null &&
    docker commit -c 'ENV PATH=/bin' -c 'CMD ["/bin/websocketd", "--port=8080", "/bin/cat"]' "$container" "$image" >/dev/null
  local rc=$?
  docker rm "$container" >/dev/null
  rm -rf "$root"
  [ "$rc" = 0 ] && say "built test image $image"
  return "$rc"
}

REDIS_PORT="${PEERGRID_TEST_REDIS_PORT:-6390}"

ensure_redis() {
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server || return 1
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes --save '' --appendonly no \
    --daemonize yes --logfile "$PEERGRID_STATE/redis.log" --dir "$PEERGRID_STATE" >/dev/null
  for _ in $(seq 1 30); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0; sleep 0.2; done
  say "redis did not start; see $PEERGRID_STATE/redis.log"
  return 1
}

ensure_rabbitmq_programs() {
  # RabbitMQ's programs, for the tests that start a node of their own on loopback ports. The packaged
  # service, which would listen on every interface, is stopped and kept from starting.
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && return 0
  apt_install rabbitmq-server || return 1
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now rabbitmq-server epmd.socket epmd.service >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    service rabbitmq-server stop >/dev/null 2>&1 || true
  fi
  epmd -kill >/dev/null 2>&1 || true
}

PG_PORT="${PEERGRID_TEST_PG_PORT:-5432}"

ensure_postgres() {
  # A local PostgreSQL with a superuser 'peergrid' (tests create and drop their own databases).
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql || return 1
  fi
  if ! is_root; then
    pg_isready -h 127.0.0.1 -p "$PG_PORT" -q || { say "PostgreSQL is not running on 127.0.0.1:$PG_PORT"; return 1; }
    return 0
  fi
  local version cluster
  version="$(ls /usr/lib/postgresql | sort -V | tail -1)"
  cluster="$(pg_lsclusters -h 2>/dev/null | awk -v v="$version" '$1==v {print $2; exit}')"
  if [ -z "$cluster" ]; then
    pg_createcluster "$version" main >/dev/null
    cluster=main
  fi
  pg_ctlcluster "$version" "$cluster" start >/dev/null 2>&1 || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p "$PG_PORT" -q && break; sleep 0.5; done
  pg_isready -h 127.0.0.1 -p "$PG_PORT" -q || { say "PostgreSQL did not start"; return 1; }
  su postgres -c "psql -p $PG_PORT -tAc \"SELECT 1 FROM pg_roles WHERE rolname='peergrid'\"" | grep -q 1 ||
    su postgres -c "psql -p $PG_PORT -qc \"CREATE ROLE peergrid LOGIN SUPERUSER PASSWORD 'peergrid'\""
}
