"""The database: engines and transactions, the schema, migrations, the call path's bare drivers."""
