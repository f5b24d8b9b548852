#!/usr/bin/env bash
# Installs (when absent) and starts the databases the test suite talks to, on 127.0.0.1 only:
# PostgreSQL on port 55432 and MariaDB on port 53306, each a private instance with its data
# under $SLUICE_SERVICES_DIR (default /var/tmp/sluice-services), so they never touch a system
# database. Safe to run again: running instances are reused.
#
#   scripts/services.sh            start them and print the environment to export
#   source scripts/services.sh     start them and export SLUICE_TEST_POSTGRES_URL / SLUICE_TEST_MYSQL_URL
#                                  (and SLUICE_TEST_JWT_HMAC_SECRET, the fixture's token secret)
#   scripts/services.sh stop       stop them
#
# Exits non-zero, naming the service and its log, when one cannot be installed or started.
set -euo pipefail

SERVICES_DIR="${SLUICE_SERVICES_DIR:-/var/tmp/sluice-services}"
PG_PORT="${SLUICE_PG_PORT:-55432}"
MYSQL_PORT="${SLUICE_MYSQL_PORT:-53306}"
DB_USER=sluice
DB_PASSWORD=sluice
DB_NAME=sluice

say() { echo "services: $*" >&2; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

# Runs a command as the unprivileged account a server needs (they refuse to run as root).
as_account() {
  local account=$1; shift
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$account" -- "$@"; else "$@"; fi
}

apt_install() {
  [ "$(id -u)" -eq 0 ] || die "$* missing and not root: install it with: sudo apt-get install -y $*"
  say "installing $* from Debian packages"
  if [ -z "${SLUICE_APT_UPDATED:-}" ]; then
    apt-get update -qq >&2 || die "apt-get update failed"
    export SLUICE_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 || die "apt-get install $* failed"
}

pg_bin() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] && echo "$found"
}

start_postgres() {
  [ -n "$(pg_bin)" ] || apt_install postgresql
  local bin data log
  bin=$(pg_bin) || die "PostgreSQL binaries not found under /usr/lib/postgresql after installing"
  data="$SERVICES_DIR/postgres"
  log="$SERVICES_DIR/postgres.log"
  mkdir -p "$SERVICES_DIR" && chmod 755 "$SERVICES_DIR"
  if [ "$(id -u)" -eq 0 ]; then id postgres >/dev/null 2>&1 || die "account postgres missing (it comes with the postgresql package)"; fi
  if [ ! -s "$data/PG_VERSION" ]; then
    say "initialising PostgreSQL in $data"
    rm -rf "$data" && mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$data"
    local pwfile="$SERVICES_DIR/.pgpass-init"
    echo "$DB_PASSWORD" > "$pwfile"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$pwfile"
    as_account postgres "$bin/initdb" -D "$data" -U "$DB_USER" --pwfile="$pwfile" \
      --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$SERVICES_DIR/postgres-init.log" 2>&1 \
      || die "PostgreSQL initdb failed; see $SERVICES_DIR/postgres-init.log"
    rm -f "$pwfile"
  fi
  if ! as_account postgres "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    touch "$log" && { [ "$(id -u)" -ne 0 ] || chown postgres: "$log"; }
    as_account postgres "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 \
      -o "-h 127.0.0.1 -p $PG_PORT -k $data -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start >&2 \
      || die "PostgreSQL did not start; see $log"
  fi
  PGPASSWORD="$DB_PASSWORD" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1 \
    || PGPASSWORD="$DB_PASSWORD" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d postgres -qc "CREATE DATABASE $DB_NAME" >&2 \
    || die "cannot create database $DB_NAME in PostgreSQL; see $log"
}

start_mariadb() {
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server mariadb-client
  local mariadbd=/usr/sbin/mariadbd data socket log client
  command -v mariadbd >/dev/null 2>&1 && mariadbd=$(command -v mariadbd)
  client=$(command -v mariadb || command -v mysql) || die "the mariadb client is missing (package mariadb-client)"
  data="$SERVICES_DIR/mariadb"
  # The socket and pid file live in the data dir, which the server's account owns.
  socket="$data/mysqld.sock"
  log="$SERVICES_DIR/mariadb.log"
  mkdir -p "$SERVICES_DIR" && chmod 755 "$SERVICES_DIR"
  local account=mysql
  [ "$(id -u)" -eq 0 ] || account=$(id -un)
  if [ ! -d "$data/mysql" ]; then
    say "initialising MariaDB in $data"
    rm -rf "$data" && mkdir -p "$data"
    # A half-done earlier start may have left a log the server's account cannot write.
    rm -f "$log"
    [ "$(id -u)" -eq 0 ] && chown mysql: "$data"
    mariadb-install-db --user="$account" --datadir="$data" --auth-root-authentication-method=socket \
      --skip-test-db >"$SERVICES_DIR/mariadb-init.log" 2>&1 || die "MariaDB initialisation failed; see $SERVICES_DIR/mariadb-init.log"
  fi
  if ! "$client" --socket="$socket" -uroot -e "SELECT 1" >/dev/null 2>&1; then
    say "starting MariaDB on 127.0.0.1:$MYSQL_PORT"
    touch "$log" && { [ "$(id -u)" -ne 0 ] || chown mysql: "$log"; }
    setsid "$mariadbd" --no-defaults --user="$account" --datadir="$data" --socket="$socket" \
      --port="$MYSQL_PORT" --bind-address=127.0.0.1 --pid-file="$data/mysqld.pid" \
      --log-error="$log" --max-connections=300 --innodb-flush-log-at-trx-commit=0 \
      --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci </dev/null >/dev/null 2>&1 &
    local server_pid=$! waited=0
    until "$client" --socket="$socket" -uroot -e "SELECT 1" >/dev/null 2>&1; do
      kill -0 "$server_pid" 2>/dev/null || { tail -n 5 "$log" >&2; die "MariaDB exited during start; see $log"; }
      sleep 0.5; waited=$((waited + 1))
      [ "$waited" -lt 120 ] || die "MariaDB did not start within 60 s; see $log"
    done
  fi
  "$client" --socket="$socket" -uroot -e "
    CREATE DATABASE IF NOT EXISTS $DB_NAME;
    CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
    CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
    GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'127.0.0.1' WITH GRANT OPTION;
    GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost' WITH GRANT OPTION;" \
    || die "cannot create the MariaDB user and database; see $log"
}

stop_all() {
  local bin
  bin=$(pg_bin) && [ -d "$SERVICES_DIR/postgres" ] && as_account postgres "$bin/pg_ctl" -D "$SERVICES_DIR/postgres" -m fast stop >&2 || true
  if [ -f "$SERVICES_DIR/mariadb/mysqld.pid" ]; then kill "$(cat "$SERVICES_DIR/mariadb/mysqld.pid")" 2>/dev/null || true; fi
}

if [ "${1:-}" = stop ]; then
  stop_all
  return 0 2>/dev/null || exit 0
fi

start_postgres
start_mariadb
export SLUICE_TEST_POSTGRES_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME"
export SLUICE_TEST_MYSQL_URL="mysql://$DB_USER:$DB_PASSWORD@127.0.0.1:$MYSQL_PORT/$DB_NAME"
# The HS256 secret the fixture DataApi verifies test tokens with (the runtime reads JWT secrets
# from the environment, as in a pod); random per shell unless already set.
export SLUICE_TEST_JWT_HMAC_SECRET="${SLUICE_TEST_JWT_HMAC_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
say "PostgreSQL ready at 127.0.0.1:$PG_PORT, MariaDB ready at 127.0.0.1:$MYSQL_PORT"
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "export SLUICE_TEST_POSTGRES_URL=$SLUICE_TEST_POSTGRES_URL"
  echo "export SLUICE_TEST_MYSQL_URL=$SLUICE_TEST_MYSQL_URL"
  echo "export SLUICE_TEST_JWT_HMAC_SECRET=$SLUICE_TEST_JWT_HMAC_SECRET"
fi
