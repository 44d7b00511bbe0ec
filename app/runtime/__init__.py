"""The process: uvicorn's guarded protocol, thread pools fair between tenants, worker processes."""
