"""The HTTP API: an aiohttp app over the supervisor and the repository."""
