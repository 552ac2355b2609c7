"""The operator REST API (``/api/v1``)."""
