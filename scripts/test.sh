#!/usr/bin/env bash
# Runs every test of nanokube: unit and integration tests (cargo, with the real
# kubectl 1.27-1.33, curl, SQLite, Python test servers, busybox-static, Debian's
# docker-registry, skopeo, runc, iptables, socat, dnsmasq and etcd), then the Python tests: the
# `kubernetes` client's, and the dashboard's in headless chromium (selenium).
# Installs what the tests need from the package registries first.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
# Image tests: a rootfs binary for test images, a real registry, and skopeo to convert
# and push archives (Debian's packages).
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v skopeo >/dev/null || need_apt+=(skopeo)
# Container tests: runc, the OCI runtime the node runs containers with.
command -v runc >/dev/null || [ -x /usr/sbin/runc ] || need_apt+=(runc)
# Pods reaching each other: the NAT rule the node puts in every pod's namespace.
command -v iptables-restore >/dev/null || [ -x /usr/sbin/iptables-restore ] || need_apt+=(iptables)
# Service and DNS tests: socat (a UDP echo server in a pod's image) and dnsmasq (the
# upstream resolver the cluster DNS forwards to, on loopback).
command -v socat >/dev/null || need_apt+=(socat)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need_apt+=(dnsmasq-base)
# Dashboard tests: a real headless browser and its WebDriver (selenium comes from PyPI).
# The etcd backend's tests run real etcd members on loopback ports (Debian's etcd-server
# ships the binary; its service is not started where there is no systemd, and the tests
# never use it).
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
# kubectl and its versioned siblings (kubectl.1.27 ... kubectl.1.33) come with the
# machine image; the tests look for them on PATH and in /usr/lib/google-cloud-sdk/bin.
command -v kubectl >/dev/null || { echo "kubectl is required on PATH" >&2; exit 1; }

echo "== python client (venv .venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt

echo "== build"
cargo build --workspace --all-targets

echo "== cargo tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi

echo "== python tests"
# The binary cargo just built (honouring CARGO_TARGET_DIR), unless NANOKUBE_BIN names one.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
NANOKUBE_BIN="${NANOKUBE_BIN:-$target_dir/debug/nanokube}" .venv/bin/pytest -q tests/python

echo "== the kubectl and python client suites again, on an etcd-backed server"
# Every server these suites start stores its cluster in a fresh etcd member.
if cargo nextest --version >/dev/null 2>&1; then
  NANOKUBE_TEST_ETCD=1 cargo nextest run -p nanokube --no-fail-fast --test kubectl_basics --test kubectl_machinery --test kubectl_watch --test api_machinery
else
  NANOKUBE_TEST_ETCD=1 cargo test -p nanokube --no-fail-fast --test kubectl_basics --test kubectl_machinery --test kubectl_watch --test api_machinery
fi
NANOKUBE_TEST_ETCD=1 NANOKUBE_BIN="${NANOKUBE_BIN:-$target_dir/debug/nanokube}" .venv/bin/pytest -q tests/python --ignore=tests/python/test_dashboard.py
