"""HTTP API (aiohttp)."""
