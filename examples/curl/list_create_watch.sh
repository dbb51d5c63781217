#!/usr/bin/env bash
# Plain REST with curl (seed S5, S8): take the server address and the credentials from
# the kubeconfig nanokube wrote, trust the cluster CA with --cacert (never --insecure),
# then list, create and watch.
#
#   KUBECONFIG=~/.nanokube/kubeconfig examples/curl/list_create_watch.sh
set -euo pipefail
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

APISERVER=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d > "$dir/ca.crt"
kubectl config view --minify --raw -o jsonpath='{.users[0].user.client-certificate-data}' | base64 -d > "$dir/client.crt"
kubectl config view --minify --raw -o jsonpath='{.users[0].user.client-key-data}' | base64 -d > "$dir/client.key"
k() { curl -sS --cacert "$dir/ca.crt" --cert "$dir/client.crt" --key "$dir/client.key" "$@"; }

echo "== namespaces"
k "$APISERVER/api/v1/namespaces" | python3 -c 'import json,sys; print(" ".join(i["metadata"]["name"] for i in json.load(sys.stdin)["items"]))'

echo "== create"
RV=$(k -X POST -H 'Content-Type: application/json' "$APISERVER/api/v1/namespaces/default/configmaps" \
  -d '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"example-curl"},"data":{"hello":"world"}}' \
  | python3 -c 'import json,sys; o=json.load(sys.stdin); print(o["metadata"]["resourceVersion"])')
echo "created at resourceVersion $RV"

echo "== watch (from that revision, one line per event)"
k -X PATCH -H 'Content-Type: application/merge-patch+json' "$APISERVER/api/v1/namespaces/default/configmaps/example-curl" -d '{"data":{"hello":"nanokube"}}' >/dev/null
k -X DELETE "$APISERVER/api/v1/namespaces/default/configmaps/example-curl" >/dev/null
k "$APISERVER/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=$RV&timeoutSeconds=1" \
  | python3 -c 'import json,sys
for line in sys.stdin: e=json.loads(line); print(e["type"], e["object"]["metadata"]["name"])'
