"""The coordinator: pure scheduler and lifecycle, the APSW store, and the asyncio service."""
