#!/bin/sh
# Forms the compose stack's Redis Cluster (docker-compose.cluster.yml), then waits until it serves every slot.
# Six nodes that never met become three shards of a primary and a replica (`redis-cli --cluster create`); a
# node that starts afresh beside a formed cluster (its container was recreated) joins it as the replica of the
# primary with the fewest; a formed cluster is left as it is. As the operator (the administrative user), its
# password from the secrets volume in the environment, never on a command line.
set -eu
nodes=${CLUSTER_NODES:-redis redis-2 redis-3 redis-4 redis-5 redis-6}
export REDISCLI_AUTH="$(cat /secrets/redis_admin_password)"
cli() { redis-cli --user scaleout-admin --no-auth-warning "$@"; }
field() { cli -h "$1" -p 6380 CLUSTER INFO | tr -d '\r' | sed -n "s/^$2://p"; }
ip_of() { getent hosts "$1" | cut -d' ' -f1; }

fresh="" formed=""
for n in $nodes; do
    if [ "$(field "$n" cluster_known_nodes)" = 1 ]; then fresh="$fresh $(ip_of "$n"):6380"; else formed="$(ip_of "$n"):6380"; fi
done
if [ -z "$formed" ]; then
    cli --cluster create $fresh --cluster-replicas 1 --cluster-yes
else
    for node in $fresh; do
        cli --cluster add-node "$node" "$formed" --cluster-slave
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
echo "Redis Cluster formed: $(cli -h redis -p 6380 CLUSTER INFO | tr -d '\r' | grep -E '^cluster_(state|size)' | tr '\n' ' ')"
