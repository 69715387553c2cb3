# Shell helpers shared by the bench/ scripts (sourced).

wait_port() { # host:port, seconds: until something listens there, or fail
    local end=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; do
        ((SECONDS < end)) || return 1
        sleep 0.2
    done
}

# host:port of a Switchboard node's HTTP API, seconds: until its /api/nodes lists three
# running members with a leader, or fail.
await_three_nodes() {
    local end=$((SECONDS + $2))
    until curl -sf -u guest:guest "http://$1/api/nodes" | python3 -c '
import json, sys
n = json.load(sys.stdin)
sys.exit(0 if sum(1 for x in n if x.get("running")) == 3 and any(x.get("is_leader") for x in n) else 1)' 2>/dev/null; do
        ((SECONDS < end)) || return 1
        sleep 0.5
    done
}

# Stops the brokers a script started (PID[rabbitmq|switchboard|mosquitto], EPMD_PID, WORK):
# RabbitMQ node $1 by rabbitmqctl (a minute after 10,000 connections: bounded, then killed)
# and the port mapper it started, then the others; removes their data (the results stay).
stop_brokers() {
    if [[ -n ${PID[rabbitmq]:-} ]]; then
        HOME=$WORK/rabbitmq timeout 120 /usr/lib/rabbitmq/bin/rabbitmqctl -n "$1" -q stop >/dev/null 2>&1 ||
            kill "${PID[rabbitmq]}" 2>/dev/null || true
        [[ -n ${EPMD_PID:-} ]] && kill "$EPMD_PID" 2>/dev/null || true
    fi
    for b in switchboard mosquitto rumqttd; do
        [[ -n ${PID[$b]:-} ]] && kill "${PID[$b]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK/switchboard-data" "$WORK/rabbitmq/mnesia"
}

# Starts RabbitMQ node $1 from the rabbitmq.conf already written in directory $2, with the
# plugins $3 (an Erlang list such as "[rabbitmq_mqtt]"), and waits until it runs; sets
# PID[rabbitmq] (PID[$4] when given: one key per node of a cluster), and EPMD_PID when
# RabbitMQ started Erlang's port mapper (then it is ours to stop).
run_rabbitmq() {
    local node=$1 dir=$2 key=${4:-rabbitmq} had_epmd=
    echo "$3." >"$dir/enabled_plugins"
    pgrep -x epmd >/dev/null && had_epmd=1
    HOME=$dir RABBITMQ_NODENAME=$node \
        RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins \
        RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log RABBITMQ_PID_FILE=$dir/pid \
        setsid /usr/lib/rabbitmq/bin/rabbitmq-server >"$dir/out.log" 2>&1 &
    HOME=$dir /usr/lib/rabbitmq/bin/rabbitmqctl -n "$node" -q wait --timeout 120 "$dir/pid" >/dev/null
    PID[$key]=$(cat "$dir/pid")
    [[ -n $had_epmd ]] || EPMD_PID=$(pgrep -x epmd || true)
}

# Makes a throwaway CA ($1/ca.pem, ca.key) and a server certificate it signs for IP 127.0.0.1
# and localhost ($1/server.pem, server.key), ECDSA P-256, with the openssl CLI. Mosquitto and
# RabbitMQ started as root read them as their own users: the directory and files are readable.
make_pki() {
    local p=$1
    mkdir -p "$p"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj "/CN=switchboard bench CA" -keyout "$p/ca.key" -out "$p/ca.pem" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj /CN=localhost -keyout "$p/server.key" -out "$p/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$p/ext.cnf"
    openssl x509 -req -in "$p/server.csr" -CA "$p/ca.pem" -CAkey "$p/ca.key" -CAcreateserial \
        -days 1 -extfile "$p/ext.cnf" -out "$p/server.pem" 2>/dev/null
    chmod 755 "$(dirname "$p")" "$p" && chmod 644 "$p"/*
}

# Prints a rabbitmq.conf for AMQP and MQTT on TCP and TLS on 127.0.0.1, ports $1 (AMQP),
# $2 (AMQPS), $3 (MQTT), $4 (MQTT over TLS), with make_pki's certificate from directory $5 and
# no client certificates asked for.
rabbitmq_tls_conf() {
    cat <<CONF
listeners.tcp.default = 127.0.0.1:$1
listeners.ssl.default = 127.0.0.1:$2
mqtt.listeners.tcp.default = 127.0.0.1:$3
mqtt.listeners.ssl.default = 127.0.0.1:$4
ssl_options.cacertfile = $5/ca.pem
ssl_options.certfile = $5/server.pem
ssl_options.keyfile = $5/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
loopback_users.guest = true
CONF
}
