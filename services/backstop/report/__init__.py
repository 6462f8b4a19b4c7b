"""Reports for people: PNG charts (matplotlib) in a self-contained HTML page."""
