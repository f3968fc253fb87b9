# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/demo.sh for the MySQL mode: a
# private MariaDB server (Debian's mariadb-server, installed with apt-get
# when missing) in a data directory of this run, on a free port of
# loopback. Nothing of the machine's own MariaDB is used or changed.
#
# After `mariadb_start DIR`, OBT_MYSQL_ADMIN_URL holds the URL of an admin
# account made for this run, with a random password: `obt-migrate
# --storage mysql` uses it to create the databases and the services'
# least-privilege users. The server speaks TLS with a certificate for
# 127.0.0.1 and localhost signed by a CA made for the run, whose PEM file
# OBT_MYSQL_CA_FILE names (for `?ssl-mode=VERIFY_IDENTITY&ssl-ca=...`; the
# admin URL itself has no TLS options, so sqlx's default PREFERRED applies).
# `mariadb_stop` (run from an EXIT trap) stops the server.

MARIADB_PID=""
# mariadbd lives in /usr/sbin, which a non-login shell may not have on PATH.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac

mariadb_log() { printf '[mariadb] %s\n' "$*" >&2; }

mariadb_install() {
  if command -v mariadbd >/dev/null && command -v mariadb-install-db >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    mariadb_log "please install mariadb-server (Debian: apt-get install mariadb-server)"
    return 1
  fi
  mariadb_log "installing mariadb-server with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  # The package's own service is not wanted: this script runs its own
  # server; policy-rc.d keeps the install from starting one.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client >&2
}

# mariadb_tls DIR: a CA (DIR/ca.pem) and a server certificate for
# 127.0.0.1 and localhost signed by it (DIR/server.pem, DIR/server-key.pem),
# valid for two days; the CA's key is deleted once it has signed. rustls
# wants X.509 v3: a CA with basicConstraints, a server certificate with its
# names in subjectAltName (the CN is not read).
mariadb_tls() {
  local dir=$1
  if ! command -v openssl >/dev/null; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
      mariadb_log "please install openssl (Debian: apt-get install openssl)"
      return 1
    fi
    mariadb_log "installing openssl with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >&2
  fi
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  rm -f "$dir"/ca.pem "$dir"/ca-key.pem "$dir"/server.pem "$dir"/server-key.pem
  if ! {
    openssl req -x509 "${ec[@]}" -days 2 -subj "/CN=outboxtable test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" &&
      openssl req "${ec[@]}" -subj "/CN=localhost" \
        -keyout "$dir/server-key.pem" -out "$dir/server.csr" &&
      openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
        -set_serial "0x$(openssl rand -hex 8)" -days 2 -out "$dir/server.pem" \
        -extfile <(printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
          "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
          "extendedKeyUsage=serverAuth")
  } 2>"$dir/tls.log"; then
    mariadb_log "making the run's TLS certificates failed; openssl said:"
    tail -n 20 "$dir/tls.log" >&2
    return 1
  fi
  rm -f "$dir/ca-key.pem" "$dir/server.csr"
}

# mariadb_start DIR: a fresh server with its data, socket and log in DIR.
mariadb_start() {
  local dir
  dir="$(mkdir -p "$1" && cd "$1" && pwd)"
  mariadb_install
  mariadb_tls "$dir" || return 1
  rm -rf "$dir/data"
  mkdir -p "$dir/data"
  local user_args=()
  [ "$(id -u)" -ne 0 ] || user_args=(--user=root)
  mariadb-install-db --no-defaults --datadir="$dir/data" --auth-root-authentication-method=socket \
    "${user_args[@]}" >"$dir/install.log" 2>&1 || {
    mariadb_log "mariadb-install-db failed; its log:"
    tail -n 20 "$dir/install.log" >&2
    return 1
  }
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  mariadbd --no-defaults --datadir="$dir/data" --socket="$dir/mariadb.sock" \
    --port="$port" --bind-address=127.0.0.1 --pid-file="$dir/mariadb.pid" \
    --log-error="$dir/mariadb.log" --skip-log-bin --innodb-buffer-pool-size=128M \
    --max-connections=500 --skip-name-resolve \
    --ssl-ca="$dir/ca.pem" --ssl-cert="$dir/server.pem" --ssl-key="$dir/server-key.pem" \
    "${user_args[@]}" >"$dir/mariadbd.out" 2>&1 &
  MARIADB_PID=$!
  local deadline=$((SECONDS + 60))
  until mariadb --no-defaults --socket="$dir/mariadb.sock" -uroot -e 'SELECT 1' >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$MARIADB_PID" 2>/dev/null; then
      mariadb_log "MariaDB did not start within 60 s; its log:"
      tail -n 40 "$dir/mariadb.log" >&2
      return 1
    fi
    sleep 0.2
  done
  # An admin account for this run only; its password never leaves the
  # environment of this shell and its children.
  local password
  password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  # mariadb-install-db makes anonymous accounts, which would shadow the
  # services' 'user'@'%' accounts; they go.
  mariadb --no-defaults --socket="$dir/mariadb.sock" -uroot <<SQL
DELETE FROM mysql.global_priv WHERE User = '';
FLUSH PRIVILEGES;
CREATE USER 'obt_admin'@'127.0.0.1' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON *.* TO 'obt_admin'@'127.0.0.1' WITH GRANT OPTION;
SQL
  export OBT_MYSQL_ADMIN_URL="mysql://obt_admin:$password@127.0.0.1:$port"
  export OBT_MYSQL_CA_FILE="$dir/ca.pem"
  mariadb_log "MariaDB on 127.0.0.1:$port (data in $dir/data; TLS, CA $dir/ca.pem)"
}

mariadb_stop() {
  if [ -n "$MARIADB_PID" ]; then
    kill "$MARIADB_PID" 2>/dev/null || true
    wait "$MARIADB_PID" 2>/dev/null || true
    MARIADB_PID=""
  fi
}
