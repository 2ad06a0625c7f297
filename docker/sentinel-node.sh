#!/bin/sh
# Starts one Redis or Sentinel of the Sentinel topology:  sentinel-node.sh primary|replica|auto|sentinel
# (`auto`: the primary if this is PRIMARY_HOST, else a replica). The peers' names default to the compose
# override's services; Kubernetes (deploy/k8s/components/sentinel) names its StatefulSets' pods instead.
# The secrets are read from SECRETS_DIR (/secrets in compose and Kubernetes, /run/secrets on a swarm).
#
# ASK_SENTINELS=true (the swarm, where a task that starts again is a new container at a new address): every
# start, not only a restart, first asks the Sentinels which Redis is primary now.
#
# Every peer is addressed by IP, resolved here once. A Sentinel that monitors a host name resolves it again
# on every check; while that container is dead, Docker's DNS answers slowly, the Sentinel's single thread
# blocks, it enters TILT mode and no failover happens. Clients would stall on the same lookups.
set -eu
# Redis and the Sentinels rewrite their configs (CONFIG REWRITE after a failover), which hold passwords:
# whatever they create is the owner's alone.
umask 077
role=$1
master=${SENTINEL_MASTER:-scaleout}
primary_host=${PRIMARY_HOST:-redis}
replica_hosts=${REPLICA_HOSTS:-redis-2 redis-3}
sentinel_hosts=${SENTINEL_HOSTS:-sentinel-1 sentinel-2 sentinel-3}
self_host=${SELF_HOST:-$(hostname)}
secrets=${SECRETS_DIR:-/secrets}
ask_first=${ASK_SENTINELS:-false}
pass=$(cat "$secrets/redis_password")

ip_of() {  # the address of a compose service, waiting (up to 30 s) until its container has one
    n=0
    while [ $n -lt 60 ]; do
        set -- $(getent hosts "$1" || true)
        if [ $# -gt 0 ]; then echo "$1"; return 0; fi
        n=$((n + 1))
        sleep 0.5
    done
    echo "no address for $1" >&2
    return 1
}

primary_now() {  # "ip port" of the primary as a Sentinel says, or nothing
    for s in $sentinel_hosts; do
        set -- $(REDISCLI_AUTH="$pass" timeout 2 redis-cli -h "$s" -p 26380 --user scaleout --no-auth-warning \
            SENTINEL get-master-addr-by-name "$master" 2>/dev/null || true)
        if [ $# -eq 2 ]; then echo "$1 $2"; return 0; fi
    done
}

answers() {  # does the Redis at "ip port" answer?
    REDISCLI_AUTH="$pass" timeout 2 redis-cli -h "$1" -p "$2" --user scaleout --no-auth-warning ping 2>/dev/null \
        | grep -q PONG
}

follow_the_primary() {  # the `replicaof` line for the primary the Sentinels name, if it is not this Redis
    me=$(ip_of "$self_host")
    n=0
    while :; do
        set -- $(primary_now)
        # None named (the first start of all), or this very address: the role as started.
        if [ $# -ne 2 ] || [ "$1" = "$me" ]; then return 1; fi
        if answers "$1" "$2"; then echo "replicaof $1 $2"; return 0; fi
        # Named but silent: this Redis under its former address, or a failover under way. Following it
        # would leave this Redis a replica of nothing, unknown to the Sentinels: wait for their election.
        n=$((n + 1))
        if [ $n -ge 120 ]; then echo "the primary the Sentinels name ($1) does not answer" >&2; exit 1; fi
        sleep 0.5
    done
}

if [ "$role" = auto ]; then
    if [ "$(ip_of "$primary_host")" = "$(ip_of "$self_host")" ]; then role=primary; else role=replica; fi
fi

case "$role" in
sentinel)
    # A restarted Sentinel keeps the config it rewrote itself (what it learnt of the topology).
    if [ ! -f /tmp/sentinel.conf ]; then
        # A Sentinel started afresh after a failover watches the primary its peers name, not the first one.
        # (Its replicas are then learnt from that primary's INFO.)
        set -- $(if [ "$ask_first" = true ]; then primary_now; fi)
        known=""
        if [ $# -eq 2 ]; then
            watched="$1 $2"
        else
            watched="$(ip_of "$primary_host") 6380"
            # Named at once, rather than learnt from the primary's INFO up to 10 s later.
            for r in $replica_hosts; do
                ip=$(ip_of "$r")  # (a peer without an address ends the script here: it starts again)
                known="$known$(printf '\nsentinel known-replica %s %s 6380' "$master" "$ip")"
            done
        fi
        # Complete before it takes the config's place: a Sentinel that starts again keeps what it finds.
        {
            cat "$secrets/sentinel.conf"
            echo "sentinel monitor $master $watched 2"
            cat "$secrets/sentinel-master.conf"
            if [ -n "$known" ]; then echo "$known" | sed 1d; fi
        } > /tmp/sentinel.conf.new
        mv /tmp/sentinel.conf.new /tmp/sentinel.conf
    fi
    exec redis-server /tmp/sentinel.conf --sentinel
    ;;
primary | replica)
    # Written afresh, owner-writable (a secret file is read-only, and Redis rewrites its config).
    rm -f /tmp/redis.conf
    cat "$secrets/redis-node.conf" > /tmp/redis.conf
    if [ "$ask_first" = true ]; then
        if follow_the_primary > /tmp/.follow; then
            cat /tmp/.follow >> /tmp/redis.conf
        elif [ "$role" = replica ]; then
            echo "replicaof $(ip_of "$primary_host") 6380" >> /tmp/redis.conf
        fi
    elif [ -f /tmp/.started ]; then
        # Back after a crash: follow whichever Redis is primary now, from the first moment, rather than
        # claim to be a primary with an empty dataset until the Sentinels notice.
        set -- $(primary_now)
        me=$(ip_of "$self_host")
        if [ $# -eq 2 ] && [ "$1" != "$me" ]; then echo "replicaof $1 $2" >> /tmp/redis.conf; fi
    elif [ "$role" = replica ]; then
        echo "replicaof $(ip_of "$primary_host") 6380" >> /tmp/redis.conf
    fi
    touch /tmp/.started
    exec redis-server /tmp/redis.conf
    ;;
*)
    echo "usage: $0 primary|replica|auto|sentinel" >&2
    exit 2
    ;;
esac
