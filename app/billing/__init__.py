"""Budgets, rate limits, prices and the ledger: what a call may cost and what it cost."""
