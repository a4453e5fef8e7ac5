"""Settings: pydantic models shared by the CLI, the flows and the watcher (unknown keys rejected, bounded)."""
