"""The alert manager web UI (`ntds-aggregator ui`): pages, JSON API and metrics over the store."""
