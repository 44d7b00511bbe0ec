"""Who may call: `sk-bf-` keys, tenants, admin users, the guards and sign-in throttling."""
