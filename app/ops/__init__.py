"""What runs beside the calls: the settlement journal, the sweeper, metrics, webhooks,
the audit trail."""
