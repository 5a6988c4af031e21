"""The web front end of the host: the dashboard page, the HTTP API, metrics."""
