"""Input and output of the watcher: frame sources, the store (with its outbox) and alert sinks.

No torch here: an edge box installs only `inspector[runtime]`.
"""
