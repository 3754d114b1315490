"""One router per concern; ``app.main`` includes them (the debug ones behind a setting)."""
