"""The route table: each CP-initiated OCPP 1.6 action and the handler that answers it."""

from __future__ import annotations

from collections.abc import Mapping

from chargegrid.csms import authorize, boot, data_transfer, meter_values, notifications, status
from chargegrid.csms import transactions as transaction_handlers
from chargegrid.csms.context import Handler, NowaitHandler

ROUTES: Mapping[str, Handler] = {
    "Authorize": authorize.authorize,
    "BootNotification": boot.boot_notification,
    "DataTransfer": data_transfer.data_transfer,
    "DiagnosticsStatusNotification": notifications.diagnostics_status_notification,
    "FirmwareStatusNotification": notifications.firmware_status_notification,
    "Heartbeat": boot.heartbeat,
    "MeterValues": meter_values.meter_values,
    "StartTransaction": transaction_handlers.start_transaction,
    "StatusNotification": status.status_notification,
    "StopTransaction": transaction_handlers.stop_transaction,
    # OCPP 1.6 Security Whitepaper
    "SecurityEventNotification": notifications.security_event_notification,
    "SignCertificate": data_transfer.sign_certificate,
    "LogStatusNotification": notifications.log_status_notification,
    "SignedFirmwareStatusNotification": notifications.signed_firmware_status_notification,
}

# Actions whose common case can be answered without a coroutine (csms/context.NowaitHandler);
# each also has its Handler above, which takes every case.
NOWAIT_ROUTES: Mapping[str, NowaitHandler] = {
    "MeterValues": meter_values.meter_values_nowait,
}
