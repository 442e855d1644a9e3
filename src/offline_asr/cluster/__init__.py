"""Ray: the batch job and the API past one machine, every node gated by its weights' check."""
