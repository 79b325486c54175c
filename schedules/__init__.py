"""Hand-written schedules, one module per target kind."""
