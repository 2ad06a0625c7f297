#!/bin/sh
# Forms the stack's Redis Cluster, then waits until it serves every slot: the compose override's one-shot
# `cluster-create` service (docker-compose.cluster.yml) runs it, and on a swarm the driver runs it in the
# `redis` task (deploy/swarm/stack.cluster.yml).
#
# Six nodes that never met become three shards: the first three nodes named are the primaries and the next
# three their replicas, in order (`redis-4` replicates `redis`, and so on), so that a stack that places each
# pair on two machines keeps both copies of no shard on one. A node that starts afresh beside a formed cluster
# (its container recreated, its machine replaced) joins it as the replica of the primary with the fewest; a
# formed cluster is left as it is. As the operator (the administrative user), its password read from the
# secrets directory into the environment, never on a command line.
set -eu
nodes=${CLUSTER_NODES:-redis redis-2 redis-3 redis-4 redis-5 redis-6}
export REDISCLI_AUTH="$(cat "${SECRETS_DIR:-/secrets}/redis_admin_password")"
cli() { redis-cli --user scaleout-admin --no-auth-warning "$@"; }
field() { cli -h "$1" -p 6380 CLUSTER INFO | tr -d '\r' | sed -n "s/^$2://p"; }
ip_of() { getent hosts "$1" | cut -d' ' -f1; }
nth() { echo "$nodes" | tr -s ' ' '\n' | sed -n "$1p"; }

fresh="" formed=""
for n in $nodes; do
    if [ "$(field "$n" cluster_known_nodes)" = 1 ]; then fresh="$fresh $n"; else formed="$(ip_of "$n"):6380"; fi
done
if [ -z "$formed" ]; then
    cli --cluster create "$(ip_of "$(nth 1)"):6380" "$(ip_of "$(nth 2)"):6380" "$(ip_of "$(nth 3)"):6380" \
        --cluster-replicas 0 --cluster-yes
    for k in 4 5 6; do
        primary=$(cli -h "$(nth $((k - 3)))" -p 6380 CLUSTER MYID | tr -d '\r')
        cli --cluster add-node "$(ip_of "$(nth "$k")"):6380" "$(ip_of "$(nth 1)"):6380" \
            --cluster-slave --cluster-master-id "$primary"
    done
else
    for node in $fresh; do
        cli --cluster add-node "$(ip_of "$node"):6380" "$formed" --cluster-slave
    done
fi
n=0
for node in $nodes; do
    until [ "$(field "$node" cluster_state)" = ok ]; do
        n=$((n + 1))
        if [ $n -ge 300 ]; then echo "the Redis Cluster did not settle within 60 s" >&2; exit 1; fi
        sleep 0.2
    done
done
echo "Redis Cluster formed: $(cli -h "$(nth 1)" -p 6380 CLUSTER INFO | tr -d '\r' | grep -E '^cluster_(state|size)' | tr '\n' ' ')"
