# Shell helpers shared by the bench/ scripts (sourced).

wait_port() { # host:port, seconds: until something listens there, or fail
    local end=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; do
        ((SECONDS < end)) || return 1
        sleep 0.2
    done
}
