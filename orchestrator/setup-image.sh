#!/bin/sh
# The users and folders of both images, in one place. Run as root at build time:
#   setup-image.sh manager    (orchestrator/Dockerfile)
#   setup-image.sh worker     (every worker image, from the runtime image's copy)
#   setup-image.sh worker-tmp (the last step of every worker image)
set -eu
role="$1"

if [ "$role" = worker-tmp ]; then
  # The last step of a worker image: /tmp and /var/tmp are the workspace's (bounded) temporary
  # folder, which the runtime makes as it starts.
  rm -rf /tmp /var/tmp
  ln -s /workspace/tmp /tmp
  ln -s /workspace/tmp /var/tmp
  exit 0
fi

# claude (1000): the orchestrator's user. The manager runs as it, and its group owns the
# shared volume. ~/.local/bin/claude is where Claude Code looks for itself (it warns
# "missing or broken" otherwise).
groupadd --gid 1000 claude
useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash claude
mkdir -p /home/claude/.local/bin
ln -s /usr/local/bin/claude /home/claude/.local/bin/claude
chown -R claude:claude /home/claude/.local

# The shared volume's folders. A new volume takes them from the first image that mounts it:
# group claude, no access for anyone else (a worker's agent is not in the group).
for folder in /orchestration /orchestration/tasks /orchestration/results /orchestration/status \
              /orchestration/logs /orchestration/attempts /orchestration/bundles; do
  mkdir -p "$folder"
  chown claude:claude "$folder"
  chmod 2770 "$folder"
done

case "$role" in
  manager)
    # The manager's clone; and, in the control plane (same image), the mirror of origin and the
    # folders it serves the manager and its workers from: new volumes take these folders' owner.
    mkdir -p /workspace /mirror /run/orchestrator /run/orchestrator-workers /run/orchestrator-keys
    chown claude:claude /workspace /mirror /run/orchestrator /run/orchestrator-workers /run/orchestrator-keys
    chmod 700 /run/orchestrator-keys  # the key the workers' tickets are made with
    ;;
  worker)
    # agent (1001): runs Claude Code on the task. No capability, no secret, no access to
    # /orchestration or to root's files. Everything it may write is in /workspace (its clone,
    # its home, its temporary folder), which spawn-worker bounds: a tmpfs of the batch's disk
    # limit, or the container's writable layer under a storage quota (see limits.py).
    useradd --uid 1001 --user-group --no-create-home --home-dir /workspace/home --shell /bin/bash agent
    mkdir -p /workspace/tmp
    chown root:root /workspace /workspace/tmp
    chmod 1777 /workspace /workspace/tmp
    # No other place of the image is the agent's to write (/tmp and /var/tmp become links into
    # the workspace at the end of the build: setup-image.sh worker-tmp).
    chmod 0755 /run/lock
    # The worker runtime runs as root, with no capability to read past file modes: the group
    # claude lets it write the shared volume.
    usermod -aG claude root
    # The runtime's own clone lives here; the agent may read it (its clone borrows its objects),
    # not write it.
    mkdir -p /var/lib/orchestrator
    chmod 755 /var/lib/orchestrator
    ;;
  *)
    echo "setup-image.sh: unknown role $role (manager or worker)" >&2
    exit 2
    ;;
esac
