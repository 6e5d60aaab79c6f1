"""The control plane: the trusted side that holds the Docker socket and the credentials, and serves the agents."""
