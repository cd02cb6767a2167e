"""The local provider: the agent (supervisor, load balancer, health checks) and its client."""
