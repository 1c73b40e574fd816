"""The daemon: events, the sequence table, the engine loop, jobs, watcher, service."""
