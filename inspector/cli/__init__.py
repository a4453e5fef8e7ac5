"""The `inspector` command."""
