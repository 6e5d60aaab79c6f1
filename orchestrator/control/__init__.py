"""The control plane: the trusted side that holds the engine, the credentials and the batch, and no agent."""
