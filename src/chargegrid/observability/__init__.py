"""Operations: Prometheus metrics, the per-charge-point OCPP message trace, structured logs.

Wired by the composition root (:mod:`chargegrid.app`); the gateway sees only the hooks of
:mod:`chargegrid.gateway.observer`.
"""
