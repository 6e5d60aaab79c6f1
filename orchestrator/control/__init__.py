"""The control plane: the trusted side, which holds the Docker socket, the credentials and the
channels the manager and the workers reach it by; it runs no agent and takes no content as instructions."""
