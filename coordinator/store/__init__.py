"""The SQLite store: attachments, lease fences, the device pool, events."""
