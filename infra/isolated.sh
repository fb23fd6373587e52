#!/usr/bin/env bash
# Run a command in a network namespace that has nothing but loopback.
#
# Ray opens gRPC ports on every interface (GCS, raylet, each actor and Serve replica), whatever
# address it is told to use, and some on the machine's own address. Inside this namespace the
# only interface is `lo`, so every one of those ports, and Kafka's and Redis's, is reachable from
# this machine's loopback inside the namespace and from nowhere else.
#
#   infra/isolated.sh make run        # the whole loop, contained
#   infra/isolated.sh make test
#
# Everything the command needs must already be installed (`make setup` outside first): the
# namespace has no route to the package registries. Services started inside live and die with it.
set -euo pipefail
if [ "$#" -eq 0 ]; then
  echo "usage: infra/isolated.sh COMMAND [ARGS...]" >&2
  exit 2
fi
if ! command -v unshare >/dev/null; then
  echo "infra/isolated.sh: unshare (util-linux) is not installed" >&2
  exit 2
fi
# As root a plain network namespace; otherwise map the user to root in a user namespace.
flags=(--net)
[ "$(id -u)" -eq 0 ] || flags+=(--map-root-user)
exec unshare "${flags[@]}" --kill-child -- bash -c 'ip link set lo up && exec "$@"' isolated "$@"
