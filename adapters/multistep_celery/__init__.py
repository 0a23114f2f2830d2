"""multistep on celery (placeholder until the adapter lands)."""
