"""Store readers, datasets, samplers and DataModules (never imports dicetalk.models)."""
