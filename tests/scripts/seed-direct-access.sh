#!/usr/bin/env bash
# The seed's direct-access recipe (S7, S8), verbatim, against a running nanokube.
# Usage: seed-direct-access.sh DATA_DIR   (KUBECONFIG must point at the cluster)
set -euo pipefail
DATA_DIR=$1

# "Read the server address from the kubeconfig."
APISERVER=$(kubectl config view --minify | grep server | cut -f 2- -d ":" | tr -d " ")
# "Find the default token secret and read its token."
SECRET_NAME=$(kubectl get secret | grep ^default | cut -f1 -d ' ')
TOKEN=$(kubectl describe secret $SECRET_NAME | grep -E '^token' | cut -f2 -d':' | tr -d " ")

echo "APISERVER=$APISERVER"
echo "SECRET_NAME=$SECRET_NAME"
# With the cluster CA: verified TLS.
curl -sS $APISERVER/api --header "Authorization: Bearer $TOKEN" --cacert "$DATA_DIR/ca.crt"
echo
# With --insecure, as the seed also shows (and warns against).
curl -sS $APISERVER/api --header "Authorization: Bearer $TOKEN" --insecure
echo
# Without either, curl refuses the self-signed cluster CA.
if curl -sS $APISERVER/api --header "Authorization: Bearer $TOKEN" >/dev/null 2>&1; then
  echo "curl accepted an unknown CA" >&2
  exit 1
fi
echo "without --cacert: refused"
