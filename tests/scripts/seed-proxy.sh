#!/usr/bin/env bash
# The seed's proxy recipe (S6), verbatim, against a running nanokube:
#   kubectl proxy --port=8080 &
#   curl http://localhost:8080/api/
# then the same through `nanokube proxy`, and the default filter refusing exec.
# Usage: NANOKUBE=/path/to/nanokube seed-proxy.sh   (KUBECONFIG must point at the cluster)
set -euo pipefail

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PORT=8080
if port_taken $PORT; then
  PORT=$(free_port)
  echo "port 8080 is taken on this machine; using $PORT instead"
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_for() { for _ in $(seq 1 100); do curl -s -o /dev/null "http://localhost:$1/api/" && return 0; sleep 0.1; done; echo "proxy on $1 did not start" >&2; return 1; }

kubectl proxy --port=$PORT &
pids+=($!)
wait_for $PORT
echo "== kubectl proxy"
curl http://localhost:$PORT/api/
echo

NPORT=$(free_port)
"$NANOKUBE" proxy --port=$NPORT &
pids+=($!)
wait_for $NPORT
echo "== nanokube proxy"
curl http://localhost:$NPORT/api/
echo

echo "== exec through the proxies (rejected by the default filter)"
curl -s -o /dev/null -w "kubectl proxy exec: %{http_code}\n" -X POST "http://localhost:$PORT/api/v1/namespaces/default/pods/web/exec?command=sh"
curl -s -o /dev/null -w "nanokube proxy exec: %{http_code}\n" -X POST "http://localhost:$NPORT/api/v1/namespaces/default/pods/web/exec?command=sh"
