#!/bin/sh
# Authorized keys from $AUTHORIZED_KEYS or a file mounted at /authorized_keys; port from $SSH_PORT.
set -eu
keys=/etc/ssh/authorized_keys/git
if [ -n "${AUTHORIZED_KEYS:-}" ]; then
  printf '%s\n' "$AUTHORIZED_KEYS" > "$keys"
elif [ -f /authorized_keys ]; then
  # A copy: StrictModes refuses a key file owned by whoever owns the mounted one on the host.
  cat /authorized_keys > "$keys"
else
  echo "gitserver: no authorized key: set AUTHORIZED_KEYS or mount a file at /authorized_keys" >&2
  exit 2
fi
chmod 644 "$keys"
# Loopback only: with --network host this is the host's loopback, and nothing else reaches it.
exec /usr/sbin/sshd -D -e -o "ListenAddress=127.0.0.1:${SSH_PORT:-2222}"
