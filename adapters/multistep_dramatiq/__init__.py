"""multistep on dramatiq (placeholder until the adapter lands)."""
