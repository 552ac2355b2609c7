"""Live event streams for UIs and apps: WebSocket and Server-Sent Events over the bus."""
