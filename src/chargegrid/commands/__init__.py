"""CSMS-initiated operations: build, route, record, apply."""
