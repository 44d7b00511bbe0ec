"""HTTP route handlers, one module per area; each handler parses, calls a service, shapes."""
