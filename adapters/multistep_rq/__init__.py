"""multistep on rq (placeholder until the adapter lands)."""
