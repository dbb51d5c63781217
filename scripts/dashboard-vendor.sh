#!/usr/bin/env bash
# Rebuilds the dashboard's vendored JavaScript (committed, so building nanokube needs
# only cargo): xterm.js, the terminal the exec tab draws, from npm's registry.
set -euo pipefail
cd "$(dirname "$0")/.."
version=5.5.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@xterm/xterm@$version" >/dev/null && tar xzf xterm-xterm-$version.tgz)
dest=crates/nanokube-dashboard/assets/vendor
mkdir -p "$dest"
cp "$work/package/lib/xterm.js" "$dest/xterm.js"
cp "$work/package/css/xterm.css" "$dest/xterm.css"
cp "$work/package/LICENSE" "$dest/xterm.LICENSE"
# The source map's reference would make browsers ask for a file that is not served.
sed -i '/^\/\/# sourceMappingURL=/d' "$dest/xterm.js"
echo "vendored @xterm/xterm $version into $dest"
