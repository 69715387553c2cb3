# Shell helpers shared by the bench/ scripts (sourced).

wait_port() { # host:port, seconds: until something listens there, or fail
    local end=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; do
        ((SECONDS < end)) || return 1
        sleep 0.2
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
# PID[rabbitmq], and EPMD_PID when RabbitMQ started Erlang's port mapper (then it is ours to
# stop).
run_rabbitmq() {
    local node=$1 dir=$2 had_epmd=
    echo "$3." >"$dir/enabled_plugins"
    pgrep -x epmd >/dev/null && had_epmd=1
    HOME=$dir RABBITMQ_NODENAME=$node \
        RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins \
        RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log RABBITMQ_PID_FILE=$dir/pid \
        setsid /usr/lib/rabbitmq/bin/rabbitmq-server >"$dir/out.log" 2>&1 &
    HOME=$dir /usr/lib/rabbitmq/bin/rabbitmqctl -n "$node" -q wait --timeout 120 "$dir/pid" >/dev/null
    PID[rabbitmq]=$(cat "$dir/pid")
    [[ -n $had_epmd ]] || EPMD_PID=$(pgrep -x epmd || true)
}
